"""The slippage and spread rule: pure, values in and a decision out.

Used by the risk gate (``risk.checks.slippage``) and by the order manager for
an order that did not pass the gate. The caller looks up the quote, the
limits and the instrument's tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from marketdata.book import Quote


@dataclass(frozen=True, slots=True)
class SlippageCheck:
    ok: bool
    reason: str
    expected_slippage: Decimal
    spread_pct: Decimal


def check_slippage(side: str, quantity: int, quote: Quote | None, limits, *, tick: Decimal) -> SlippageCheck:
    """Refuse when expected slippage per unit exceeds ``max_slippage_per_leg``
    or the spread exceeds ``max_spread_pct_of_mid`` % of mid. ``tick``: the
    instrument's tick (each layer past the top of book costs about one)."""
    if quote is None or quote.bid <= 0 or quote.ask <= 0 or quote.ask < quote.bid:
        return SlippageCheck(False, "no usable quote for the slippage check", Decimal("0"), Decimal("0"))
    mid = Decimal(str(quote.mid))
    spread = Decimal(str(quote.ask)) - Decimal(str(quote.bid))
    # Compared unrounded: 0.3005 % of mid is above a 0.3 % rule. Rounded only to report it.
    spread_pct = spread / mid * 100
    size = quote.ask_qty if side == "BUY" else quote.bid_qty
    # Past the top of book each further top-size slice costs about one more tick.
    layers = max((quantity - 1) // max(size, 1), 0)
    expected = (spread / 2 + Decimal(tick) * layers).quantize(Decimal("0.01"))
    if spread_pct > limits.max_spread_pct_of_mid:
        shown = spread_pct.quantize(Decimal("0.0001"))
        return SlippageCheck(
            False, f"spread {shown}% of mid exceeds {limits.max_spread_pct_of_mid}%", expected, spread_pct
        )
    if expected > limits.max_slippage_per_leg:
        return SlippageCheck(
            False, f"expected slippage ₹{expected} exceeds ₹{limits.max_slippage_per_leg} per leg", expected, spread_pct
        )
    return SlippageCheck(True, "", expected, spread_pct)

"""The one feed interface: an async iterator of typed snapshots.

Simulator, replay and the Dhan live feed all yield the same two types:

* ``ChainSnapshot`` — one option chain (an underlying and an expiry), shaped
  like Dhan's option-chain v2 response: one row per contract (strike × CE/PE)
  held in numpy arrays, plus the underlying's last price;
* ``LtpTick`` — the last traded price of an index, a future or India VIX;
* ``QuoteSnapshot`` — top of book, once a second, of one underlying's
  candidate contracts (ATM ± 3 strikes, CE and PE): what the strategy's
  2-second mid-jump window is measured on. The simulator and replay produce
  it; the Dhan feed does not yet (its market-feed subscription is separate
  work), so on live data the jump is measured between chain snapshots.

Arrays are float64 (int64 for quantities, OI and volume). ``flags`` is filled
by ``marketdata.validation``: 0 means the row is good; bad rows are masked,
never dropped.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

CE, PE = 0, 1  # option_type codes in ChainSnapshot.option_type

# The per-contract arrays of a ChainSnapshot, in field order (not flags).
ROW_ARRAYS = (
    "security_id",
    "strike",
    "option_type",
    "last_price",
    "oi",
    "prev_oi",
    "volume",
    "bid",
    "ask",
    "bid_qty",
    "ask_qty",
    "iv",
    "delta",
    "gamma",
    "theta",
    "vega",
)


def array_key(values: np.ndarray) -> bytes:
    """A 1-d array's dtype and bytes: equal keys, equal arrays (what a per-chain cache compares)."""
    return values.dtype.str.encode() + values.tobytes()


@dataclass(slots=True)
class ChainSnapshot:
    underlying: str
    expiry: dt.date
    exchange_time: dt.datetime  # when the source says the data is from
    received_at: dt.datetime  # engine clock when it arrived
    underlying_ltp: float
    security_id: np.ndarray  # str (dtype "U20")
    strike: np.ndarray  # float64
    option_type: np.ndarray  # int8: CE=0, PE=1
    last_price: np.ndarray
    oi: np.ndarray  # int64
    prev_oi: np.ndarray  # int64
    volume: np.ndarray  # int64, cumulative for the day
    bid: np.ndarray
    ask: np.ndarray
    bid_qty: np.ndarray  # int64
    ask_qty: np.ndarray  # int64
    iv: np.ndarray  # percent, as Dhan reports it
    delta: np.ndarray
    gamma: np.ndarray
    theta: np.ndarray
    vega: np.ndarray
    flags: np.ndarray = field(default=None)  # uint16 bit flags from validation; 0 = good
    quality: float = 1.0  # share of good rows, set by validation
    seq: int = 0  # feed sequence number

    def __post_init__(self) -> None:
        if self.flags is None:
            self.flags = np.zeros(len(self.security_id), dtype=np.uint16)

    def __len__(self) -> int:
        return len(self.security_id)

    @property
    def mid(self) -> np.ndarray:
        return (self.bid + self.ask) / 2.0

    @property
    def good(self) -> np.ndarray:
        return self.flags == 0


@dataclass(frozen=True, slots=True)
class LtpTick:
    security_id: str
    exchange_segment: str  # IDX_I for indices and India VIX, NSE_FNO for futures
    symbol: str  # NIFTY, BANKNIFTY, NIFTY-FUT, INDIAVIX …
    kind: str  # INDEX | FUT | VIX
    ltp: float
    exchange_time: dt.datetime
    received_at: dt.datetime
    seq: int = 0
    # The top of book, where the source has it (the market feed's quote and full packets);
    # NaN / 0 otherwise.
    bid: float = float("nan")
    ask: float = float("nan")
    bid_qty: int = 0
    ask_qty: int = 0
    oi: int = 0


@dataclass(slots=True)
class QuoteSnapshot:
    """Top of book of a few contracts of one underlying at one moment."""

    underlying: str
    exchange_time: dt.datetime
    received_at: dt.datetime
    security_id: np.ndarray  # str
    bid: np.ndarray  # float64
    ask: np.ndarray
    bid_qty: np.ndarray  # int64
    ask_qty: np.ndarray
    seq: int = 0

    def __len__(self) -> int:
        return len(self.security_id)


FeedItem = ChainSnapshot | LtpTick | QuoteSnapshot


class Feed(abc.ABC):
    """Async iterator of ``ChainSnapshot`` and ``LtpTick`` in time order."""

    name: str = "feed"

    def __aiter__(self) -> AsyncIterator[FeedItem]:
        return self.stream()

    @abc.abstractmethod
    def stream(self) -> AsyncIterator[FeedItem]:
        """Yield items until the session (or the data) ends, or ``close`` is called."""

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections; the iterator ends."""

    def previous_session_vix(self) -> list[tuple[dt.datetime, float]]:
        """India VIX (time, value) of the session before this one, when the feed can
        produce it and nothing was stored (the simulator); the VIX breaker is seeded
        from it."""
        return []
    def get_state(self) -> dict | None:
        """What a restarted feed needs to carry on where this one is (JSON-able), or
        None for a feed that has nothing to carry (a live or recorded one)."""
        return None

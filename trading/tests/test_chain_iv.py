"""The option chain's IV prices what the chain shows: each contract's IV, put back
through Black-Scholes with the page's spot, strike, expiry and the feed's rate,
gives the page's mid (bid and ask) within a tick — the contract the simulator's
informed flow jumps included."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from decimal import Decimal

import numpy as np
import pytest
from django.urls import reverse

from marketdata import greeks
from marketdata.feeds.simulator import RATE
from quanthub.clock import IST, SESSION_CLOSE
from trading.conftest import DAY, sim_engine

pytestmark = pytest.mark.django_db(transaction=True)

TICK = Decimal("0.05")  # NIFTY options' tick in the demo master (asserted below)
FLOW_STRIKE = Decimal("24500")  # the 09:16:30 informed flow of the default scenario: NIFTY 24500 CE


def _cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row_html, re.S)]


def _number(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def test_every_contracts_iv_prices_the_mid_the_chain_shows(enabled, client, trader):
    from marketdata.models import Instrument

    engine, _ = sim_engine(dt.time(9, 15), dt.time(9, 17, 30))
    asyncio.run(engine.run())  # the flow's jump and part of its follow-through are in the last chain
    assert Instrument.objects.get(security_id="132611240245000").tick_size == TICK

    client.force_login(trader)
    page = client.get(reverse("trading:chain"), {"underlying": "NIFTY"}).content.decode()
    spot = float(_number(re.search(r'data-testid="spot">([\d.,]+)<', page).group(1)))
    header = re.search(r"expiry \w{3} (\d{2} \w{3} \d{4}) .*? as of (\d\d:\d\d:\d\d)", page).groups()
    expiry = dt.datetime.strptime(header[0], "%d %b %Y").replace(tzinfo=IST).date()
    at = dt.datetime.combine(DAY, dt.time.fromisoformat(header[1]), tzinfo=IST)
    years = max((dt.datetime.combine(expiry, SESSION_CLOSE, tzinfo=IST) - at).total_seconds(), 600.0) / (365 * 86400)

    body = page.split('data-testid="chain-NIFTY"', 1)[1].split("</tbody>", 1)[0]
    checked, flow, call_ivs = [], None, []
    for row in body.split("<tr")[2:]:  # past the two header rows
        cells = _cells(row)
        if len(cells) != 17:
            continue
        strike = _number(cells[8].split()[0])
        for is_call, (iv, bid, ask) in (
            (True, (cells[3], cells[5], cells[6])),
            (False, (cells[13], cells[10], cells[11])),
        ):
            mid = (_number(bid) + _number(ask)) / 2
            price = float(greeks.price(spot, float(strike), years, RATE, float(iv) / 100, is_call))
            checked.append((strike, is_call, mid, price))
            if is_call:
                call_ivs.append(float(iv))
                if strike == FLOW_STRIKE:
                    flow = float(iv)
    assert len(checked) >= 20
    off = [(s, "CE" if c else "PE", m, round(p, 3)) for s, c, m, p in checked if abs(p - float(m)) > float(TICK)]
    assert not off, off
    # The flow's contract is priced above the smile: its IV stands above its neighbours'.
    assert flow is not None and flow > float(np.median(call_ivs))

"""Our market-feed parser against dhanhq's own: the same bytes, the same numbers."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from quanthub.dhan import packets


class _Context:
    def get_client_id(self):
        return "1000000001"

    def get_access_token(self):
        return "not-used"


def dhanhq_parser():
    from dhanhq.marketfeed import MarketFeed

    return MarketFeed(_Context(), [])


def test_each_packet_kind_reads_as_dhanhq_reads_it():
    theirs = dhanhq_parser()
    ticker = packets.ticker("IDX_I", 13, 24512.35, 1764583200)
    quote = packets.quote("NSE_FNO", 52432, 245.5, 1764583201, volume=123456)
    oi = packets.oi_packet("NSE_FNO", 52432, 4_500_000)
    full = packets.full(
        "NSE_FNO",
        52432,
        245.5,
        1764583202,
        bid=245.45,
        ask=245.55,
        bid_qty=650,
        ask_qty=1300,
        oi=4_500_000,
        volume=99,
    )
    assert theirs.process_data(ticker)["LTP"] == "24512.35" and theirs.process_data(ticker)["security_id"] == 13
    assert theirs.process_data(quote)["volume"] == 123456
    assert theirs.process_data(oi)["OI"] == 4_500_000
    parsed_full = theirs.process_data(full)
    assert parsed_full["OI"] == 4_500_000 and parsed_full["depth"][0]["bid_price"] == "245.45"
    assert parsed_full["depth"][0]["ask_quantity"] == 1300
    ours = packets.parse(ticker + quote + oi + full)
    assert ours.ticks["security_id"].tolist() == [13, 52432, 52432]
    assert ours.ticks["ltp"].tolist() == [24512.35, 245.5, 245.5]
    assert ours.ticks["bid"][2] == 245.45 and ours.ticks["ask_qty"][2] == 1300 and ours.ticks["oi"][2] == 4_500_000
    assert ours.oi["oi"].tolist() == [4_500_000]


def test_a_disconnect_packet_carries_its_reason():
    data = packets.disconnect(806)
    assert struct.unpack("<BHBIH", data) == (50, 10, 0, 0, 806)
    assert packets.parse(data).disconnect == [806]


def test_a_truncated_packet_is_left_alone_and_an_unknown_one_skipped_by_its_length():
    unknown = struct.pack("<BhBi", 99, 12, 2, 7) + b"\0\0\0\0"
    data = unknown + packets.ticker("IDX_I", 13, 100.0, 1) + packets.ticker("IDX_I", 25, 200.0, 1)[:10]
    parsed = packets.parse(data)
    assert parsed.unknown == 1 and parsed.ticks["security_id"].tolist() == [13]


@given(st.lists(st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 10_000_000)), min_size=1, max_size=50))
def test_any_burst_of_tickers_parses_back_to_its_prices(rows):
    data = b"".join(packets.ticker("NSE_FNO", sid, paise / 100, 1764583200) for sid, paise in rows)
    parsed = packets.parse(data)
    assert parsed.ticks["security_id"].tolist() == [sid for sid, _ in rows]
    expected = np.round(np.array([paise / 100 for _, paise in rows], dtype=np.float32).astype(np.float64), 2)
    assert np.array_equal(parsed.ticks["ltp"], expected)

"""Dhan's Live Market Feed, binary and little-endian, as its v2 documentation
describes and dhanhq's ``marketfeed.py`` parses it.

Every packet starts with an 8-byte header: response code (u8), message length
(i16), exchange segment (u8), security id (i32). Then, by response code:

==== ============ ====== ==========================================================
code packet      bytes  after the header
==== ============ ====== ==========================================================
2    ticker        16    LTP f32, last trade time i32 (epoch s)
4    quote         50    LTP f32, LTQ i16, LTT i32, ATP f32, volume i32, total sell
                         qty i32, total buy qty i32, open/close/high/low f32
5    OI            12    open interest i32
6    prev close    16    previous close f32, previous OI i32
7    status         8    (market status; header only)
8    full         162    as quote to total buy qty, then OI, OI day high, OI day low
                         i32, open/close/high/low f32, 5 levels of depth × 20 bytes:
                         bid qty i32, ask qty i32, bid orders i16, ask orders i16,
                         bid f32, ask f32
50   disconnect    10    reason code i16 (805 too many connections, 806 no data plan,
                         807 token expired, 808 bad client id, 809 auth failed)
==== ============ ====== ==========================================================

A websocket message may hold one packet or several back to back. ``parse``
walks the headers, groups packets by code and decodes each group in one
``numpy.frombuffer`` call per field (no per-packet ``struct`` work), so a
burst of thousands of packets costs a few array operations.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import numpy as np

TICKER, QUOTE, OI, PREV_CLOSE, STATUS, FULL, DISCONNECT = 2, 4, 5, 6, 7, 8, 50
SIZES = {TICKER: 16, QUOTE: 50, OI: 12, PREV_CLOSE: 16, STATUS: 8, FULL: 162, DISCONNECT: 10}
SEGMENTS = {
    0: "IDX_I",
    1: "NSE_EQ",
    2: "NSE_FNO",
    3: "NSE_CURRENCY",
    4: "BSE_EQ",
    5: "MCX_COMM",
    7: "BSE_CURRENCY",
    8: "BSE_FNO",
}
SEGMENT_CODES = {name: code for code, name in SEGMENTS.items()}
REQUEST_TICKER, REQUEST_QUOTE, REQUEST_FULL, REQUEST_DISCONNECT = 15, 17, 21, 12

_HEADER = np.dtype([("code", "u1"), ("length", "<i2"), ("segment", "u1"), ("security_id", "<i4")])
_DTYPES = {
    TICKER: np.dtype(_HEADER.descr + [("ltp", "<f4"), ("ltt", "<i4")]),
    QUOTE: np.dtype(
        _HEADER.descr
        + [
            ("ltp", "<f4"),
            ("ltq", "<i2"),
            ("ltt", "<i4"),
            ("atp", "<f4"),
            ("volume", "<i4"),
            ("sell_qty", "<i4"),
            ("buy_qty", "<i4"),
            ("open", "<f4"),
            ("close", "<f4"),
            ("high", "<f4"),
            ("low", "<f4"),
        ]
    ),
    OI: np.dtype(_HEADER.descr + [("oi", "<i4")]),
    PREV_CLOSE: np.dtype(_HEADER.descr + [("prev_close", "<f4"), ("prev_oi", "<i4")]),
    FULL: np.dtype(
        _HEADER.descr
        + [
            ("ltp", "<f4"),
            ("ltq", "<i2"),
            ("ltt", "<i4"),
            ("atp", "<f4"),
            ("volume", "<i4"),
            ("sell_qty", "<i4"),
            ("buy_qty", "<i4"),
            ("oi", "<i4"),
            ("oi_high", "<i4"),
            ("oi_low", "<i4"),
            ("open", "<f4"),
            ("close", "<f4"),
            ("high", "<f4"),
            ("low", "<f4"),
            (
                "depth",
                [
                    ("bid_qty", "<i4"),
                    ("ask_qty", "<i4"),
                    ("bid_orders", "<i2"),
                    ("ask_orders", "<i2"),
                    ("bid", "<f4"),
                    ("ask", "<f4"),
                ],
                (5,),
            ),
        ]
    ),
    DISCONNECT: np.dtype(_HEADER.descr + [("reason", "<i2")]),
}
for _code, _size in SIZES.items():
    if _code in _DTYPES:
        assert _DTYPES[_code].itemsize == _size, (_code, _DTYPES[_code].itemsize)


@dataclass(slots=True)
class Parsed:
    """One message's packets, by kind, as column arrays (security ids as int64)."""

    ticks: dict[str, np.ndarray] = field(default_factory=dict)  # ticker, quote and full: one row each
    oi: dict[str, np.ndarray] = field(default_factory=dict)
    prev_close: dict[str, np.ndarray] = field(default_factory=dict)
    disconnect: list[int] = field(default_factory=list)
    unknown: int = 0

    @property
    def count(self) -> int:
        return len(self.ticks.get("security_id", ())) + len(self.oi.get("security_id", ()))


def _offsets(buffer: bytes) -> dict[int, list[int]]:
    """Where each packet starts, by response code. Packets of one code share a size,
    so the walk reads one byte per packet."""
    by_code: dict[int, list[int]] = {}
    view = memoryview(buffer)
    position, end = 0, len(buffer)
    while position + 8 <= end:
        code = view[position]
        size = SIZES.get(code)
        if size is None:
            # An unknown packet: its own length field says how far to skip.
            length = int.from_bytes(view[position + 1 : position + 3], "little", signed=True)
            if length < 8:
                break
            by_code.setdefault(-1, []).append(position)
            position += length
            continue
        if position + size > end:
            break
        by_code.setdefault(code, []).append(position)
        position += size
    return by_code


def _gather(buffer: bytes, code: int, offsets: list[int]) -> np.ndarray:
    dtype = _DTYPES[code]
    first, size = offsets[0], dtype.itemsize
    if offsets[-1] - first == size * (len(offsets) - 1):  # contiguous: one view, no copy
        return np.frombuffer(buffer, dtype=dtype, count=len(offsets), offset=first)
    raw = np.frombuffer(buffer, dtype=np.uint8)
    index = (np.asarray(offsets)[:, None] + np.arange(size)[None, :]).ravel()
    return raw[index].view(dtype)


def parse(buffer: bytes) -> Parsed:
    out = Parsed()
    groups = _offsets(buffer)
    out.unknown = len(groups.pop(-1, ()))
    parts = []
    for code in (TICKER, QUOTE, FULL):
        if code not in groups:
            continue
        rows = _gather(buffer, code, groups[code])
        n = len(rows)
        nan = np.full(n, np.nan)
        zero = np.zeros(n, dtype=np.int64)
        if code == FULL:
            top = rows["depth"][:, 0]
            bid, ask = np.round(top["bid"].astype(np.float64), 2), np.round(top["ask"].astype(np.float64), 2)
            bid_qty, ask_qty = top["bid_qty"].astype(np.int64), top["ask_qty"].astype(np.int64)
            oi = rows["oi"].astype(np.int64)
            volume = rows["volume"].astype(np.int64)
        elif code == QUOTE:
            bid, ask, bid_qty, ask_qty, oi = nan, nan, zero, zero, zero
            volume = rows["volume"].astype(np.int64)
        else:
            bid, ask, bid_qty, ask_qty, oi, volume = nan, nan, zero, zero, zero, zero
        parts.append(
            {
                "security_id": rows["security_id"].astype(np.int64),
                "segment": rows["segment"].astype(np.int64),
                "ltp": np.round(rows["ltp"].astype(np.float64), 2),
                "ltt": rows["ltt"].astype(np.int64),
                "bid": bid,
                "ask": ask,
                "bid_qty": bid_qty,
                "ask_qty": ask_qty,
                "oi": oi,
                "volume": volume,
            }
        )
    if parts:
        out.ticks = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if OI in groups:
        rows = _gather(buffer, OI, groups[OI])
        out.oi = {"security_id": rows["security_id"].astype(np.int64), "oi": rows["oi"].astype(np.int64)}
    if PREV_CLOSE in groups:
        rows = _gather(buffer, PREV_CLOSE, groups[PREV_CLOSE])
        out.prev_close = {
            "security_id": rows["security_id"].astype(np.int64),
            "prev_close": rows["prev_close"].astype(np.float64),
        }
    if DISCONNECT in groups:
        rows = _gather(buffer, DISCONNECT, groups[DISCONNECT])
        out.disconnect = [int(r) for r in rows["reason"]]
    return out


# --- building packets: the local servers of the tests and the benchmark speak the same layout ----


def _header(code: int, segment: str, security_id: int) -> np.ndarray:
    row = np.zeros(1, dtype=_DTYPES[code])
    row["code"], row["length"], row["segment"], row["security_id"] = (
        code,
        SIZES[code],
        SEGMENT_CODES[segment],
        security_id,
    )
    return row


def ticker(segment: str, security_id: int, ltp: float, at: dt.datetime | int) -> bytes:
    row = _header(TICKER, segment, security_id)
    row["ltp"], row["ltt"] = ltp, at if isinstance(at, int) else int(at.timestamp())
    return row.tobytes()


def quote(segment: str, security_id: int, ltp: float, at: dt.datetime | int, *, volume: int = 0) -> bytes:
    row = _header(QUOTE, segment, security_id)
    row["ltp"], row["ltt"], row["volume"] = ltp, at if isinstance(at, int) else int(at.timestamp()), volume
    return row.tobytes()


def oi_packet(segment: str, security_id: int, oi: int) -> bytes:
    row = _header(OI, segment, security_id)
    row["oi"] = oi
    return row.tobytes()


def full(
    segment: str,
    security_id: int,
    ltp: float,
    at: dt.datetime | int,
    *,
    bid: float,
    ask: float,
    bid_qty: int = 0,
    ask_qty: int = 0,
    oi: int = 0,
    volume: int = 0,
) -> bytes:
    row = _header(FULL, segment, security_id)
    row["ltp"], row["ltt"], row["oi"], row["volume"] = (
        ltp,
        at if isinstance(at, int) else int(at.timestamp()),
        oi,
        volume,
    )
    depth = row["depth"]
    depth["bid"][0, 0], depth["ask"][0, 0] = bid, ask
    depth["bid_qty"][0, 0], depth["ask_qty"][0, 0] = bid_qty, ask_qty
    row["depth"] = depth
    return row.tobytes()


def disconnect(reason: int) -> bytes:
    row = _header(DISCONNECT, "IDX_I", 0)
    row["reason"] = reason
    return row.tobytes()


def subscription(instruments: list[tuple[str, str]], request_code: int = REQUEST_FULL) -> list[str]:
    """v2 subscription messages (JSON), at most 100 instruments each."""
    messages = []
    for start in range(0, len(instruments), 100):
        batch = instruments[start : start + 100]
        messages.append(
            json.dumps(
                {
                    "RequestCode": request_code,
                    "InstrumentCount": len(batch),
                    "InstrumentList": [{"ExchangeSegment": seg, "SecurityId": str(sid)} for seg, sid in batch],
                }
            )
        )
    return messages

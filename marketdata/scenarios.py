"""Declarative scenarios for the market simulator.

A scenario is JSON (a file or a dict) with a list of events, each with a
``time`` (HH:MM:SS, IST, on the simulated trading day) and a ``type``:

* ``informed_flow`` — on one option (``underlying``, ``option_type`` CE/PE,
  ``strike_offset`` in strike steps from ATM at that moment): a volume burst
  (``volume_multiple`` × the normal 3-second volume), a mid-price jump
  (``jump_pct``, default 8 %), then an OI build-up (``oi_build`` contracts over
  ``oi_minutes``) and a price follow-through (``follow_through_pct`` over
  ``follow_minutes``; negative for a move against the flow).
* ``vix_spike`` — India VIX up ``points``, decaying over ``decay_minutes``;
  realised volatility rises with it.
* ``feed_gap`` — nothing is emitted for ``seconds``.
* ``bad_ticks`` — one ``underlying``'s next snapshot carries ``count`` bad rows
  of ``kind``: crossed, negative, nan, zero, stale (the whole snapshot's
  timestamp is old), missing (strikes dropped).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "default.json"
EVENT_TYPES = {"informed_flow", "vix_spike", "feed_gap", "bad_ticks"}
BAD_TICK_KINDS = {"crossed", "negative", "nan", "zero", "stale", "missing"}


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Event:
    at: dt.time
    type: str
    params: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclass(slots=True)
class Scenario:
    name: str = "calm"
    events: list[Event] = field(default_factory=list)

    @classmethod
    def load(cls, source: str | Path | dict | None) -> Scenario:
        if source is None:
            return cls()
        if isinstance(source, dict):
            data = source
            name = str(source.get("name", "inline"))
        else:
            path = Path(source)
            if str(source) == "default":
                path = DEFAULT_SCENARIO
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ScenarioError(f"Cannot read scenario {path}: {exc.strerror}") from None
            except json.JSONDecodeError as exc:
                raise ScenarioError(f"Scenario {path} is not valid JSON: line {exc.lineno}: {exc.msg}") from None
            name = str(data.get("name", path.stem))
        raw_events = data.get("events", [])
        if not isinstance(raw_events, list):
            raise ScenarioError("Scenario 'events' must be a list")
        events = []
        for number, raw in enumerate(raw_events, start=1):
            if not isinstance(raw, dict):
                raise ScenarioError(f"Event {number} must be an object")
            kind = raw.get("type")
            if kind not in EVENT_TYPES:
                raise ScenarioError(
                    f"Event {number}: type must be one of {', '.join(sorted(EVENT_TYPES))}, got {kind!r}"
                )
            try:
                at = dt.time.fromisoformat(str(raw.get("time")))
            except ValueError:
                raise ScenarioError(f"Event {number}: time must be HH:MM[:SS], got {raw.get('time')!r}") from None
            if kind == "bad_ticks" and raw.get("kind") not in BAD_TICK_KINDS:
                raise ScenarioError(
                    f"Event {number}: bad_ticks kind must be one of {', '.join(sorted(BAD_TICK_KINDS))}"
                )
            if kind == "informed_flow" and raw.get("option_type", "CE") not in ("CE", "PE"):
                raise ScenarioError(f"Event {number}: option_type must be CE or PE")
            params = {k: v for k, v in raw.items() if k not in ("type", "time")}
            events.append(Event(at, kind, params))
        events.sort(key=lambda e: e.at)
        return cls(name=name, events=events)

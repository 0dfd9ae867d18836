"""The Volume-OI detector and strategy on seeded simulated sessions it was not tuned on.

    python benchmarks/detector.py [--json PATH] [--seed N] [--minutes M] [--calm-days D]
                                  [--oi-sigma S] [--vix-sigma S]

The benchmark writes its own scenario file (``var/bench/detector_scenario.json``)
from ``--seed``: informed flow at random times on both underlyings, CE and PE,
one right after a feed gap and one right after a VIX spike, with calm
stretches between; and a second, "noise" scenario whose flows carry a volume
burst and a price jump but no OI build (what the OI confirmation must not
confirm). The strategy runs on the simulator's items with every order filled
at its price at once, so what is measured is the plan: lots and hedge.

Metrics:

* ``events_detected_ratio`` — injected flows detected within one snapshot;
* ``false_signals`` — entries with no injected flow behind them;
* ``noise_confirm_rate`` — OI confirmations on pure noise: of the flows
  without an OI build, and of pseudo-signals placed every two minutes on the
  14 contracts nearest the money of the noise session;
* ``informed_confirm_rate`` — confirmations of flows with one;
* ``vix_trip_delay_s`` — the VIX spike's time to trip (seconds, worst);
* ``vix_noise_trips`` — trips on calm seeded sessions (the breaker seeded
  from each session's previous one);
* ``option_lots_per_signal`` — option lots held per signal that scaled (least);
* ``hedge_delta_error_lots_max`` — |net delta| in futures lots after each
  option fill's hedge;
* ``noise_confirm_floor`` — what the confirmation rule itself gives on pure
  noise: the share of Gaussian random walks that cross ``oi_sigma`` × the
  exact σ of their elapsed horizon at one of the window's looks (240 s / 3 s =
  80), by Monte Carlo. No estimate of σ can bring ``noise_confirm_rate`` below it;
* ``vix_noise_trips_floor`` — what the VIX rule itself gives on the same number
  of calm sessions: the breaker (same thresholds) on Gaussian random walks of
  VIX, each seeded from one of its own, expected trips.

The thresholds are the product's (``VolOiConfig``, the defaults of
``RiskLimits``); ``--oi-sigma`` and ``--vix-sigma`` replace them to show what
another threshold would give.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, parser, report, setup_django  # noqa: E402

DAY = dt.date(2026, 11, 23)


def write_scenarios(seed: int, minutes: int, folder: Path) -> tuple[Path, Path]:
    """Event times from the benchmark's own seed (not the demo's)."""
    rng = np.random.default_rng(seed)
    start = dt.datetime.combine(DAY, dt.time(9, 15))
    events, noise = [], []
    # Flows every 9-14 minutes from 09:20, alternating underlyings and CE/PE; each
    # has four minutes of calm after it (OI window and time stop).
    at = start + dt.timedelta(minutes=5)
    n = 0
    end = start + dt.timedelta(minutes=minutes - 6)
    while at < end:
        underlying = ("NIFTY", "BANKNIFTY")[n % 2]
        option = ("CE", "PE")[(n // 2) % 2]
        flow = {
            "type": "informed_flow",
            "underlying": underlying,
            "option_type": option,
            "strike_offset": int(rng.integers(-2, 3)),
            "follow_through_pct": float(rng.uniform(5, 20)),
            "follow_minutes": 8,
        }
        if n == 2:  # right after a feed gap: the flow arrives with the recovering feed
            events.append({"time": at.strftime("%H:%M:%S"), "type": "feed_gap", "seconds": 8})
            at += dt.timedelta(seconds=9)
        if n == 4:  # right after a VIX spike
            events.append({"time": at.strftime("%H:%M:%S"), "type": "vix_spike", "points": 3.0, "decay_minutes": 10})
            at += dt.timedelta(seconds=20)
        events.append({"time": at.strftime("%H:%M:%S"), **flow})
        noise.append({"time": at.strftime("%H:%M:%S"), **flow, "oi_build": 0})
        at += dt.timedelta(seconds=int(rng.integers(9 * 60, 14 * 60)))
        n += 1
    folder.mkdir(parents=True, exist_ok=True)
    main, calm = folder / "detector_scenario.json", folder / "detector_noise_scenario.json"
    main.write_text(json.dumps({"name": f"detector-{seed}", "seed": seed, "events": events}, indent=1))
    calm.write_text(json.dumps({"name": f"detector-noise-{seed}", "seed": seed, "events": noise}, indent=1))
    return main, calm


def run_session(scenario: Path, seed: int, minutes: int, config, vix_monitor, probe_every_s: int = 0):
    """Detector + strategy over one session, orders filled at their price at once."""
    from marketdata import synthetic
    from marketdata.feeds.base import ChainSnapshot, LtpTick, QuoteSnapshot
    from marketdata.feeds.simulator import SimulatorFeed
    from marketdata.validation import ChainValidator
    from trading.strategies.base import FillEvent
    from trading.strategies.vol_oi.detector import Pending
    from trading.strategies.vol_oi.strategy import VolOiStrategy

    end = (dt.datetime.combine(DAY, dt.time(9, 15)) + dt.timedelta(minutes=minutes)).time()
    feed = SimulatorFeed(seed=seed, scenario=str(scenario), trading_day=DAY, end_time=end)
    strategy = VolOiStrategy()
    strategy.configure(config)
    contracts = synthetic.build_master(DAY)
    strategy.set_instruments(
        {c.security_id: c.lot_size for c in contracts if c.kind in ("CE", "PE")},
        {c.underlying: (c.security_id, c.lot_size) for c in contracts if c.kind == "FUT"},
    )
    validator = ChainValidator(strike_steps={"NIFTY": 50, "BANKNIFTY": 100})
    vix = vix_monitor()
    vix.seed(feed.previous_session_vix())
    entries, confirms, trips, errors = [], [], [], []
    probes: dict[str, dt.datetime] = {}  # pseudo-signals on pure noise: security id -> when
    probe_hits = [0, 0]  # confirmed, judged
    detector = strategy.detector
    inner = detector.on_snapshot

    def watched(snapshot):
        found = inner(snapshot)
        for d in found:
            if d.kind == "confirm" and d.security_id in probes:
                probe_hits[0] += 1
                del probes[d.security_id]
        for sid, at in list(probes.items()):
            if (
                snapshot.exchange_time - at
            ).total_seconds() > strategy.config.oi_window_s and sid in snapshot.security_id:
                probe_hits[1] += 1
                del probes[sid]
        if (
            probe_every_s
            and snapshot.exchange_time.second % probe_every_s == 0
            and snapshot.exchange_time.minute % 2 == 0
        ):
            near = np.argsort(np.abs(snapshot.strike - snapshot.underlying_ltp))[:14]
            for i in near.tolist():
                sid = str(snapshot.security_id[i])
                if sid not in detector.spikes and snapshot.flags[i] == 0:
                    detector.spikes[sid] = Pending(snapshot.exchange_time, float(snapshot.oi[i]))
                    probes[sid] = snapshot.exchange_time
        return found

    detector.on_snapshot = watched
    max_lots: dict[str, int] = {}
    prices: dict[str, float] = {}

    def execute(intents, at):
        queue = list(intents)
        while queue:
            intent = queue.pop(0)
            price = intent.limit_price if intent.limit_price is not None else prices.get(intent.security_id, 0.0)
            fill = FillEvent(
                intent.strategy_key,
                intent.signal_key,
                intent.security_id,
                intent.side,
                intent.quantity,
                type(intent.limit_price)(str(price)) if intent.limit_price is not None else _decimal(price),
                at,
                intent.purpose,
                True,
            )
            queue.extend(strategy.on_fill(fill))
            trade = strategy.trades.get(intent.signal_key or "")
            if trade is not None and intent.purpose in ("ENTRY", "SCALE", "HEDGE") and not queue:
                lot = strategy.lot_sizes[trade.security_id]
                max_lots[trade.key] = max(max_lots.get(trade.key, 0), trade.held // lot)
                future_lot = strategy.futures[trade.underlying][1]
                delta = strategy.last_delta.get(trade.security_id, 0.0)
                errors.append(abs(delta * trade.held + trade.hedge_held) / future_lot)

    for item in feed.run_sync():
        if isinstance(item, LtpTick):
            prices[item.security_id] = item.ltp
            if item.kind == "VIX" and vix.observe(item.exchange_time, item.ltp) == "trip":
                trips.append(item.exchange_time)
            continue
        if isinstance(item, QuoteSnapshot):
            strategy.on_quotes(item)
            continue
        if isinstance(item, ChainSnapshot):
            validator.validate(item, item.received_at)
            before = {k: t.phase for k, t in strategy.trades.items()}
            intents = list(strategy.on_snapshot(item))
            for intent in intents:
                if intent.purpose == "ENTRY":
                    entries.append((item.exchange_time, intent.security_id))
                elif intent.purpose == "SCALE":
                    confirms.append((item.exchange_time, intent.security_id, before.get(intent.signal_key)))
            execute(intents, item.exchange_time)
            execute(strategy.on_timer(item.exchange_time), item.exchange_time)
    probe_hits[1] += probe_hits[0]
    return feed, entries, confirms, trips, errors, max_lots, probe_hits


def _decimal(value: float):
    from decimal import Decimal

    return Decimal(str(value))


def calm_vix_trips(seeds: list[int], vix_monitor) -> int:
    """Full calm sessions, VIX only (the breaker seeded from each one's previous session)."""
    from marketdata.feeds.simulator import SimulatorFeed

    trips = 0
    for seed in seeds:
        feed = SimulatorFeed(seed=seed, trading_day=DAY)
        monitor = vix_monitor()
        monitor.seed(feed.previous_session_vix())
        for at, value in feed.vix_path():
            trips += monitor.observe(at, value) == "trip"
    return trips


def confirm_floor(sigma: float, looks: int, seed: int, paths: int = 20_000) -> float:
    """Share of zero-drift Gaussian random walks whose change since the start exceeds
    ``sigma`` × its exact σ (σ₁·√k after k steps) at one of ``looks`` steps."""
    rng = np.random.default_rng(seed)
    walks = rng.standard_normal((paths, looks)).cumsum(axis=1)
    crossed = (walks > sigma * np.sqrt(np.arange(1, looks + 1))).any(axis=1)
    return float(crossed.mean())


def vix_trips_floor(vix_monitor, sessions: int, seed: int, simulated: int = 10) -> float:
    """Expected trips over ``sessions`` calm sessions of VIX as a Gaussian random walk (one
    tick a second, 09:15-15:30), the breaker seeded from one such session before each."""
    from quanthub.clock import IST

    rng = np.random.default_rng(seed)
    opening = dt.datetime.combine(DAY, dt.time(9, 15), tzinfo=IST)
    seconds = [opening + dt.timedelta(seconds=s) for s in range(int(6.25 * 3600) + 1)]
    before = [t - dt.timedelta(days=1) for t in seconds]
    trips = 0
    for _ in range(simulated):
        monitor = vix_monitor()
        monitor.seed(zip(before, (13.0 + np.cumsum(rng.normal(0, 0.0045, len(seconds)))).tolist(), strict=True))
        path = 13.0 + np.cumsum(rng.normal(0, 0.0045, len(seconds)))
        trips += sum(monitor.observe(t, v) == "trip" for t, v in zip(seconds, path.tolist(), strict=True))
    return trips / simulated * sessions


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=20261201, help="seed of the scenario and the sessions")
    p.add_argument("--minutes", type=int, default=120, help="length of each simulated session")
    p.add_argument("--calm-days", type=int, default=3, help="calm full sessions for the VIX breaker")
    p.add_argument("--oi-sigma", type=float, help="OI confirmation threshold in σ (default: the strategy's)")
    p.add_argument("--vix-sigma", type=float, help="VIX breaker threshold in σ (default: RiskLimits')")
    args = p.parse_args()
    if args.calm_days < 1:
        p.error("--calm-days must be at least 1")
    if args.vix_sigma is not None and not args.vix_sigma > 0:
        p.error("--vix-sigma must be above 0")
    setup_django()
    from risk.breakers import VixMonitor
    from risk.models import RiskLimits
    from trading.strategies.config import StrategyConfigError
    from trading.strategies.vol_oi.config import VolOiConfig

    try:
        config = VolOiConfig.from_params({} if args.oi_sigma is None else {"oi_sigma": args.oi_sigma})
    except StrategyConfigError as exc:
        p.error(f"--oi-sigma: {exc}")
    limits = RiskLimits()  # the product's defaults (unsaved: no database)

    def vix_monitor() -> VixMonitor:
        sigma = float(limits.vix_breaker_sigma) if args.vix_sigma is None else args.vix_sigma
        return VixMonitor(
            sigma=sigma,
            normalise_minutes=float(limits.vix_normalise_minutes),
            window_s=float(limits.vix_change_window_s),
            min_samples=int(limits.vix_min_samples),
        )

    started = time.monotonic()
    folder = ROOT / "var" / "bench"
    main_file, noise_file = write_scenarios(args.seed, args.minutes, folder)
    if '"vix_spike"' not in main_file.read_text():
        p.error(f"--minutes {args.minutes} is too short for the fifth flow, the one after the VIX spike (try 75)")

    feed, entries, confirms, trips, errors, max_lots, _ = run_session(
        main_file, args.seed, args.minutes, config, vix_monitor
    )
    flows = [e for e in feed.injected if e.type == "informed_flow"]
    detected = 0
    matched = set()
    for flow in flows:
        hit = [
            (at, sid)
            for at, sid in entries
            if sid == flow.security_id and dt.timedelta(0) <= at - flow.at <= dt.timedelta(seconds=3)
        ]
        detected += bool(hit)
        matched.update(hit)
    false_signals = len([e for e in entries if e not in matched])
    informed_confirmed = len({sid for _, sid, _ in confirms})
    spike = next(e.at for e in feed.injected if e.type == "vix_spike")
    after = [t for t in trips if t >= spike]
    delay = (after[0] - spike).total_seconds() if after else float("inf")
    scaled = [lots for key, lots in max_lots.items() if lots > config.probe_lots]

    noise_feed, noise_entries, noise_confirms, _, _, _, probes = run_session(
        noise_file, args.seed + 1, args.minutes, config, vix_monitor, probe_every_s=30
    )
    noise_flows = [e for e in noise_feed.injected if e.type == "informed_flow"]
    noise_signals = {sid for _, sid in noise_entries}

    calm_trips = calm_vix_trips([args.seed + 100 + i for i in range(args.calm_days)], vix_monitor)
    looks = int(round(config.oi_window_s / config.interval_s))
    metrics = {
        "events_detected_ratio": round(detected / len(flows), 4) if flows else 0.0,
        "false_signals": false_signals,
        "noise_confirm_rate": round(
            (len({s for _, s, _ in noise_confirms}) + probes[0]) / max(len(noise_signals) + probes[1], 1), 4
        ),
        "noise_pseudo_signals": probes[1],
        "informed_confirm_rate": round(informed_confirmed / max(len({s for _, s in entries}), 1), 4),
        "vix_trip_delay_s": delay,
        "vix_noise_trips": calm_trips,
        "option_lots_per_signal": min(scaled) if scaled else 0,
        "hedge_delta_error_lots_max": round(max(errors), 4) if errors else 0.0,
        "noise_confirm_floor": round(confirm_floor(config.oi_sigma, looks, args.seed), 4),
        "vix_noise_trips_floor": round(vix_trips_floor(vix_monitor, args.calm_days, args.seed), 2),
        "oi_sigma": config.oi_sigma,
        "vix_sigma": vix_monitor().sigma,
        "flows_injected": len(flows),
        "noise_flows_injected": len(noise_flows),
        "noise_signals": len(noise_signals),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"scenario: {main_file} (seed {args.seed}); noise: {noise_file}\n")
    report("detector", metrics, args.json)


if __name__ == "__main__":
    main()

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest

from marketdata.anomaly import training
from marketdata.anomaly.features import FEATURES, FeatureTracker
from marketdata.anomaly.forest import CompiledForest
from marketdata.anomaly.model import ArtefactError, TrainingParams, dump_artefact, load_artefact, train
from marketdata.feeds.base import ChainSnapshot
from marketdata.feeds.simulator import SimulatorFeed
from marketdata.models import AnomalyModel
from marketdata.storage import SnapshotWriter
from marketdata.validation import ChainValidator
from trading.strategies.vol_oi.config import VolOiConfig
from trading.strategies.vol_oi.detector import VolOiDetector

DAY = dt.date(2026, 11, 23)


@pytest.fixture(autouse=True)
def _artefacts(tmp_path, settings):
    settings.QUANTHUB_ANOMALY_DIR = str(tmp_path / "anomaly")


def _store_session(day=DAY, minutes=12, seed=5):
    feed = SimulatorFeed(
        seed=seed,
        scenario="default",
        trading_day=day,
        end_time=(dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time(),
    )
    validator = ChainValidator()
    writer = SnapshotWriter()
    for item in feed.run_sync():
        if isinstance(item, ChainSnapshot):
            validator.validate(item, item.received_at)
        writer.add(item)
    writer.flush(close_bars=True)
    return feed


def _forest(rows=4000, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 6))
    return IsolationForest(n_estimators=24, max_samples=64, random_state=seed, **kwargs).fit(X), rng


def test_compiled_forest_scores_exactly_as_scikit_learn():
    forest, rng = _forest()
    compiled = CompiledForest.from_sklearn(forest)
    X = np.vstack([rng.standard_normal((300, 6)) * 3, np.zeros((5, 6)), -np.zeros((5, 6))])
    np.testing.assert_allclose(compiled.score(X), -forest.score_samples(X), rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=64), min_size=6, max_size=6))
def test_compiled_forest_agrees_on_any_row(values):
    forest, _ = _FOREST
    row = np.array([values])
    assert CompiledForest.from_sklearn(forest).score(row)[0] == pytest.approx(-forest.score_samples(row)[0], abs=1e-12)


_FOREST = _forest(seed=3)


def test_compiled_forest_agrees_on_the_thresholds_themselves():
    """Rows on, just below and just above every split threshold, in float64 and in
    float32: where the rounding of inputs and thresholds decides the branch."""
    forest, rng = _forest(seed=5)
    compiled = CompiledForest.from_sklearn(forest)
    thresholds = np.concatenate([e.tree_.threshold[e.tree_.feature >= 0] for e in forest.estimators_])
    as32 = thresholds.astype(np.float32)
    edges = np.concatenate(
        [
            thresholds,
            np.nextafter(thresholds, np.inf),
            np.nextafter(thresholds, -np.inf),
            as32,
            np.nextafter(as32, np.float32(np.inf)),
            np.nextafter(as32, np.float32(-np.inf)),
        ]
    ).astype(np.float64)
    X = rng.standard_normal((len(edges), 6))
    for f in range(6):
        X[:, f] = rng.permutation(edges)
    np.testing.assert_allclose(compiled.score(X), -forest.score_samples(X), rtol=0, atol=1e-12)


def test_the_stored_model_scores_exactly_as_the_forest_it_was_trained_as(tmp_path):
    """Trained, written, verified and loaded the way the engine loads it: the loaded
    scorer's raw scores are scikit-learn's, on training-like rows and on wild ones."""
    rng = np.random.default_rng(9)
    rows = rng.standard_normal((5000, len(FEATURES))) * [1, 1, 0.2, 1, 0.3, 0.5]
    trained = train("NIFTY", rows, TrainingParams())
    path = tmp_path / "model.pkl"
    digest = dump_artefact(trained, path)
    scorer = load_artefact(path, digest)
    X = np.vstack([rng.standard_normal((400, len(FEATURES))), rng.standard_normal((400, len(FEATURES))) * 50])
    expected = -trained.forest.score_samples(X)
    np.testing.assert_allclose(scorer.raw(X), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scorer.raw(X[:42]), expected[:42], rtol=0, atol=1e-12)  # a smaller snapshot after
    assert ((scorer.score(X) >= 0) & (scorer.score(X) <= 1)).all()


def test_compiled_forest_scores_from_several_threads_at_once():
    """Each thread scores in scratch arrays of its own."""
    from concurrent.futures import ThreadPoolExecutor

    forest, rng = _forest(seed=6)
    compiled = CompiledForest.from_sklearn(forest)
    batches = [rng.standard_normal((n, 6)) for n in (400, 42, 400, 7, 250, 400) * 4]
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(compiled.score, batches))
    for X, got in zip(batches, scores, strict=True):
        np.testing.assert_allclose(got, -forest.score_samples(X), rtol=0, atol=1e-12)


def test_compiled_forest_says_what_it_expects():
    forest, _ = _FOREST
    with pytest.raises(ValueError, match="rows of 6 features"):
        CompiledForest.from_sklearn(forest).score(np.zeros((3, 5)))


def test_compiled_forest_refuses_trees_it_cannot_hold():
    forest = IsolationForest(n_estimators=2, max_samples=256, random_state=0).fit(
        np.random.default_rng(0).random((512, 3))
    )
    with pytest.raises(ValueError, match="leaves"):
        CompiledForest.from_sklearn(forest)


def test_injected_informed_flow_scores_in_the_top_percentile():
    """Trained on one simulated morning, scored on another seed's: the burst of each
    informed flow ranks above 99 % of the contract snapshots it was trained on."""

    def rows(seed):
        feed = SimulatorFeed(seed=seed, scenario="default", trading_day=DAY, end_time=dt.time(9, 40))
        trackers, out = {}, []
        validator = ChainValidator()
        for item in feed.run_sync():
            if isinstance(item, ChainSnapshot) and item.underlying == "NIFTY":
                validator.validate(item, item.received_at)
                f = trackers.setdefault(item.underlying, FeatureTracker()).update(item)
                out.append((item, f))
        return out, feed.injected

    trained_on, _ = rows(11)
    model = train("NIFTY", np.concatenate([f.matrix[f.usable] for _, f in trained_on]))
    held_out, injected = rows(12)
    bursts = {(e.at, e.security_id) for e in injected if e.type == "informed_flow" and e.underlying == "NIFTY"}
    scores = []
    for snapshot, f in held_out:
        for i, sid in enumerate(snapshot.security_id.tolist()):
            if (snapshot.exchange_time, sid) in bursts and f.usable[i]:
                scores.append(model.scorer.score(f.matrix[i : i + 1])[0])
    assert len(scores) >= 2  # NIFTY flows before 09:40 whose baselines were ready
    assert min(scores) >= 0.99


def test_train_anomaly_trains_a_live_version_per_underlying(demo_market):
    _store_session()
    call_command("train_anomaly", "--date", DAY.isoformat())
    rows = {row.underlying: row for row in AnomalyModel.objects.all()}
    assert set(rows) == {"NIFTY", "BANKNIFTY"}
    nifty = rows["NIFTY"]
    assert nifty.live and nifty.window_start == nifty.window_end == DAY and nifty.sessions == 1
    assert nifty.samples > 1000 and set(nifty.score_quantiles) == {"p50", "p90", "p99", "p99.9"}
    assert Path(nifty.artefact).is_file() and len(nifty.sha256) == 64
    scorers, errors = training.live_scorers()
    assert errors == [] and set(scorers) == {"NIFTY", "BANKNIFTY"}
    assert scorers["NIFTY"].version == nifty.pk
    scores = scorers["NIFTY"].score(np.zeros((3, len(FEATURES))))
    assert ((scores >= 0) & (scores <= 1)).all()


def test_train_anomaly_says_so_when_nothing_is_stored(demo_market):
    with pytest.raises(CommandError, match="No stored option chains"):
        call_command("train_anomaly", "--date", DAY.isoformat())
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        call_command("train_anomaly", "--date", "23-11-2026")


def test_a_tampered_artefact_is_never_unpickled(demo_market, monkeypatch):
    _store_session(minutes=8)
    row = training.train_underlying("NIFTY", DAY)
    path = Path(row.artefact)
    path.write_bytes(pickle.dumps({"format": 1, "evil": True}))  # a replaced file
    loads = []
    monkeypatch.setattr(pickle, "loads", lambda data: loads.append(data))
    with pytest.raises(ArtefactError, match="SHA-256"):
        training.load(row)
    scorers, errors = training.live_scorers()
    assert scorers == {} and "refusing to load" in errors[0]
    assert loads == []
    path.unlink()
    with pytest.raises(ArtefactError, match="cannot read"):
        training.load(row)


def test_pin_keeps_a_version_live_through_training_and_rollback_goes_back(demo_market):
    _store_session(minutes=8)
    first = training.train_underlying("NIFTY", DAY, params=TrainingParams(seed=1))
    second = training.train_underlying("NIFTY", DAY, params=TrainingParams(seed=2))
    first.refresh_from_db()
    assert second.live and not first.live
    training.pin(first)
    third = training.train_underlying("NIFTY", DAY, params=TrainingParams(seed=3))
    assert not AnomalyModel.objects.get(pk=third.pk).live
    assert AnomalyModel.objects.get(pk=first.pk).live
    training.unpin(AnomalyModel.objects.get(pk=first.pk))
    fourth = training.train_underlying("NIFTY", DAY, params=TrainingParams(seed=4))
    assert AnomalyModel.objects.get(live=True, underlying="NIFTY").pk == fourth.pk
    back = training.rollback("NIFTY")
    assert back.pk == third.pk
    assert AnomalyModel.objects.get(pk=fourth.pk).retired
    assert AnomalyModel.objects.filter(underlying="NIFTY", live=True).count() == 1


def test_admin_pins_and_rolls_back(demo_market, client, django_user_model):
    _store_session(minutes=8)
    old = training.train_underlying("NIFTY", DAY, params=TrainingParams(seed=1))
    new = training.train_underlying("NIFTY", DAY, params=TrainingParams(seed=2))
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "a-long-test-password")
    client.force_login(admin)
    url = "/admin/marketdata/anomalymodel/"
    assert client.get(url).status_code == 200
    client.post(url, {"action": "roll_back_selected", "_selected_action": [new.pk]})
    assert AnomalyModel.objects.get(live=True).pk == old.pk
    client.post(url, {"action": "pin_selected", "_selected_action": [old.pk]})
    assert AnomalyModel.objects.get(pk=old.pk).pinned


def test_nightly_training_is_scheduled_after_the_close(db):
    task = PeriodicTask.objects.get(task="marketdata.train_anomaly_models")
    assert task.enabled and task.crontab.hour == "16" and task.crontab.day_of_week == "1-5"


def test_the_task_trains_today(demo_market, monkeypatch):
    from marketdata import tasks

    seen = []
    monkeypatch.setattr(training, "train_all", lambda day: seen.append(day) or [])
    assert tasks.train_anomaly_models.apply().get() == {}
    assert len(seen) == 1


# --- the detector's hook ---------------------------------------------------------------


class _FixedScorer:
    version = 41

    def __init__(self, value):
        self.value = value

    def score(self, matrix):
        return np.full(len(matrix), self.value)


def _detections(config, scorers, kind="entry"):
    detector = VolOiDetector(config)
    detector.set_scorers(scorers)
    feed = SimulatorFeed(seed=5, scenario="default", trading_day=DAY, end_time=dt.time(9, 25))
    found = []
    for item in feed.run_sync():
        if isinstance(item, ChainSnapshot):
            found.extend(detector.on_snapshot(item))
    return [d for d in found if d.kind == kind]


def test_signals_carry_the_live_models_score():
    entries = _detections(VolOiConfig(), {"NIFTY": _FixedScorer(0.997), "BANKNIFTY": _FixedScorer(0.5)})
    assert entries
    for d in entries:
        assert d.features["anomaly_model"] == 41
        # None only where the contract's features are not usable yet (too little history).
        assert d.features["anomaly_score"] in ((0.997 if d.underlying == "NIFTY" else 0.5), None)
    assert any(d.features["anomaly_score"] == 0.997 for d in entries)


def test_confirmations_carry_the_score_and_the_build_that_confirmed():
    confirms = _detections(VolOiConfig(), {"NIFTY": _FixedScorer(0.997), "BANKNIFTY": _FixedScorer(0.5)}, "confirm")
    assert confirms
    for d in confirms:
        assert d.features["anomaly_model"] == 41
        assert d.features["anomaly_score"] == (0.997 if d.underlying == "NIFTY" else 0.5)
        assert d.features["oi_build"] > 0 and 0 < d.features["oi_horizon_s"] <= 240
        assert d.features["oi_build_z"] > VolOiConfig().oi_sigma


def test_a_minimum_score_keeps_out_entries_below_it_and_without_a_model():
    plain = _detections(VolOiConfig(), {})
    assert plain and all("anomaly_score" not in d.features for d in plain)
    gated = _detections(
        VolOiConfig(min_anomaly_score=0.99), {"NIFTY": _FixedScorer(0.997), "BANKNIFTY": _FixedScorer(0.5)}
    )
    assert gated and {d.underlying for d in gated} == {"NIFTY"}
    assert len(gated) == len([d for d in plain if d.underlying == "NIFTY"])
    assert _detections(VolOiConfig(min_anomaly_score=0.99), {}) == []

"""Monitoring as code: the alert rules (promtool), Alertmanager's routes
(amtool), the Grafana dashboard's queries, and a smoke test with Debian's
Prometheus scraping a served engine and web tier and answering through its
HTTP API."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from quanthub.metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "quanthub.json"
RULES = DOCKER / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
PROMETHEUS = "/usr/bin/prometheus"
# CI installs Debian's prometheus and prometheus-alertmanager (.ci/run); elsewhere
# a missing tool skips its test with the command that installs it.
IN_CI = os.environ.get("CI") == "true"


def _need(path: str, package: str) -> None:
    if not Path(path).exists():
        if IN_CI:
            pytest.fail(f"{path} is missing in CI: .ci/run installs {package}")
        pytest.skip(f"{path} is not installed (apt-get install {package})")


# PromQL words that are not metric names.
_FUNCTIONS = {
    "max", "min", "sum", "avg", "count", "by", "without", "rate", "increase", "histogram_quantile", "time",
    "absent", "or", "and", "unless", "on", "ignoring", "group_left", "group_right", "le", "bool", "offset",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers outside label matchers
    and ranges, minus PromQL's own words."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r"\((?:\s*\w+\s*,?)+\)", lambda m: m.group(0) if "_" in m.group(0) else "()", bare)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    by_labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        by_labels.update(label.strip() for label in group.split(","))
    return {t for t in tokens if t not in _FUNCTIONS and t not in by_labels and not re.fullmatch(r"\d+e?", t)}


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def rule_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def test_every_dashboard_query_names_only_metrics_the_code_exports():
    exported = exported_names()
    queries = dashboard_queries()
    assert len(queries) >= 30
    for title, expr in queries:
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= exported, (title, names - exported)


def test_every_alert_rule_names_only_metrics_the_code_exports():
    exported = exported_names()
    for alert, expr in rule_queries():
        names = metric_names(expr)
        assert names and names <= exported, (alert, names - exported)


def test_the_dashboard_covers_what_on_call_watches():
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    for needed in (
        "quanthub_engine_up",  # engine health
        "quanthub_tick_to_intent_seconds_bucket",  # latency histograms
        "quanthub_snapshot_to_ack_seconds_bucket",
        "quanthub_orders_today",  # orders
        "quanthub_order_rejects_total",
        "quanthub_net_pnl_rupees",  # P&L against its cap
        "quanthub_loss_cap_rupees",
        "quanthub_margin_used_rupees",  # margin against its cap
        "quanthub_margin_cap_ratio",
        "quanthub_feed_age_seconds",  # feed staleness
        "quanthub_ws_push_lag_last_seconds",  # websocket lag
        "quanthub_host_cpu_ratio",  # host CPU
    ):
        assert needed in used, needed


def test_grafana_provisions_the_data_source_the_dashboard_uses():
    source = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"] if panel.get("targets")} == {uid}
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/quanthub.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    _need(PROMTOOL, "prometheus")
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_queries())} rules found" in check.stdout
    test = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "alerts.test.yml").read_text()))
    assert tested == {alert for alert, _ in rule_queries()}


def test_promtool_accepts_the_scrape_config(tmp_path):
    _need(PROMTOOL, "prometheus")
    token = tmp_path / "metrics_token"
    token.write_text("t")
    config = (DOCKER / "prometheus/prometheus.yml").read_text().replace("/run/secrets/metrics_token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(RULES, tmp_path / "alerts.yml")
    out = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_alertmanager_pages_critical_and_sends_everything_to_slack():
    _need(AMTOOL, "prometheus-alertmanager")
    config = str(DOCKER / "alertmanager/alertmanager.yml")
    check = subprocess.run([AMTOOL, "check-config", config], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    def receivers(*labels: str) -> str:
        out = subprocess.run(
            [AMTOOL, "config", "routes", "test", f"--config.file={config}", *labels],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    assert receivers("severity=critical", "alertname=QuantHubEngineDown") == "pagerduty,slack"
    assert receivers("severity=warning", "alertname=QuantHubHostCpuHigh") == "slack"
    assert receivers("alertname=SomethingElse") == "slack"
    text = Path(config).read_text()
    assert "routing_key_file: /run/secrets/pagerduty_routing_key" in text
    assert "api_url_file: /run/secrets/slack_webhook_url" in text


# --- Smoke: Debian's Prometheus against a served engine and web tier -----------------------

ENGINE_METRICS_PORT = 55617
WEB_PORT = 55618
PROMETHEUS_PORT = 55690
TOKEN = "smoke-metrics-token"


def _wait(predicate, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        try:
            value = predicate()
        except (requests.RequestException, OSError, KeyError, IndexError, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what} after {timeout} s")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_prometheus_scrapes_the_engine_and_the_web_tier_and_answers_queries(tmp_path):
    _need(PROMETHEUS, "prometheus")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "DJANGO_"))}
    env.update(
        QUANTHUB_VAR_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'quanthub.sqlite3'}",
        DEBUG="1",
        QUANTHUB_TESTING="0",
        PYTHONUNBUFFERED="1",
        METRICS_TOKEN=TOKEN,
        LOG_LEVEL="warning",
        AUDIT_CHECKPOINT_TO_SINKS="false",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True, timeout=240)
    subprocess.run([*manage, "seed_demo", "--enable-strategy"], env=env, check=True, timeout=240, capture_output=True)
    engine_log = open(tmp_path / "engine.log", "wb")  # noqa: SIM115  (closed below)
    engine = subprocess.Popen(
        [
            *manage, "run_engine", "--serve", "--port", str(WEB_PORT), "--speed", "5", "--date", "2026-11-23",
            "--metrics-port", str(ENGINE_METRICS_PORT),
        ],
        env=env, stdout=engine_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    prometheus = None
    try:
        _wait(lambda: _port_open(WEB_PORT) and _port_open(ENGINE_METRICS_PORT), 180, "engine and web up", engine)
        (tmp_path / "token").write_text(TOKEN)
        shutil.copy(RULES, tmp_path / "alerts.yml")
        scrape = {
            "authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")},
            "scrape_interval": "1s",
        }
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {"job_name": "quanthub-web", "metrics_path": "/health/metrics", **scrape,
                 "static_configs": [{"targets": [f"127.0.0.1:{WEB_PORT}"]}]},
                {"job_name": "quanthub-engine", "metrics_path": "/metrics", **scrape,
                 "static_configs": [{"targets": [f"127.0.0.1:{ENGINE_METRICS_PORT}"]}]},
            ],
        }  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
        prometheus = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
            ],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1"

        def query(expr: str) -> list:
            answer = requests.get(f"{api}/query", params={"query": expr}, timeout=5).json()
            assert answer["status"] == "success", (expr, answer)
            return answer["data"]["result"]

        # Both targets up, scraped with the token.
        _wait(lambda: len(query("up == 1")) == 2, 90, "both targets up", prometheus)
        # The engine's own metrics, read back through Prometheus.
        beats = _wait(lambda: query("quanthub_engine_heartbeat_timestamp_seconds"), 90, "engine heartbeat")
        assert beats[0]["metric"]["job"] == "quanthub-engine"
        assert abs(float(beats[0]["value"][1]) - time.time()) < 30
        ages = _wait(lambda: query("quanthub_feed_age_seconds"), 90, "feed ages per underlying")
        assert {series["metric"]["underlying"] for series in ages} >= {"NIFTY", "BANKNIFTY"}
        assert query('quanthub_tick_to_intent_seconds_count{job="quanthub-engine"}')
        # The web tier's: the database's view of the engine and its own request latency.
        up = _wait(lambda: query('quanthub_engine_up{job="quanthub-web"} == 1'), 90, "engine up from the web tier")
        assert up[0]["metric"]["account"] == "default"
        # A scrape's own request is counted once it has answered: the next scrape shows it.
        _wait(
            lambda: query('quanthub_http_request_duration_seconds_count{route="health/metrics"}'),
            90,
            "web request latency",
            prometheus,
        )
        assert query('quanthub_host_cpu_ratio{job="quanthub-web"}')
        # The alert rules load, and the engine-down rule is quiet while it trades.
        rules = requests.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        loaded = {rule["name"]: rule for group in rules for rule in group["rules"]}
        assert set(loaded) == {alert for alert, _ in rule_queries()}
        assert all(rule["health"] in ("ok", "unknown") for rule in loaded.values())
        assert loaded["QuantHubEngineDown"]["state"] == "inactive"
        # Every dashboard query is valid PromQL against these metrics.
        for title, expr in dashboard_queries():
            query(expr)
            assert title
    finally:
        if prometheus is not None:
            _stop(prometheus)
        _stop(engine)
        engine_log.close()
        if engine.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            print((tmp_path / "engine.log").read_text()[-5000:])

"""deploy/: the Grafana dashboard and the Prometheus alert rules, checked against
the metrics a real daemon exposes, and the rules with promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.admin import redis_store_available
from tests.support.daemon import Daemon, http_get

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
RULES = ROOT / "deploy" / "prometheus-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus-alerts.test.yml"
METRIC = re.compile(r"\b(presenced_[a-z_]+|process_[a-z_]+)\b")


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which(str(ROOT / ".tools" / "promtool"))
    if found is None:
        pytest.skip("promtool not found (on PATH or in .tools/): scripts/test unpacks it from "
                    "Debian's prometheus package when apt can reach it")
    return found


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every metric name a Redis-backed daemon exposes (with its _total/_bucket forms)."""
    missing = redis_store_available()
    if missing is not None:
        pytest.skip(missing)
    from tests.support.redis_server import RedisServer

    with RedisServer() as redis, Daemon("--redis-url", redis.url) as daemon:
        status, text = http_get(f"{daemon.admin_url}/metrics")
    assert status == 200
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(f"{name}_total")
            elif kind == "histogram":
                names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_uses_only_metrics_the_daemon_exposes(exposed):
    used = {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    assert used, "no metric found in the dashboard"
    assert used <= exposed, sorted(used - exposed)


def test_the_dashboard_covers_what_operators_watch():
    text = " ".join(dashboard_exprs())
    for metric in ("presenced_online_users", "presenced_connections", "presenced_logins_total",
                   "presenced_heartbeats_total", "presenced_updates_coalesced_total",
                   "presenced_notify_latency_seconds_bucket", "presenced_store_healthy",
                   "presenced_redis_flush_latency_seconds_bucket",
                   "presenced_redis_resyncs_total"):
        assert metric in text, metric
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables  # per worker
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_alert_rules_use_only_metrics_the_daemon_exposes(exposed):
    used = {m for expr in rule_exprs() for m in METRIC.findall(expr)}
    assert used <= exposed, sorted(used - exposed)
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"]}
    assert {"PresencedRedisDown", "PresencedResyncLoop", "PresencedLoginFailureSpike",
            "PresencedNotifyLatencyOverBudget"} <= alerts


def test_promtool_checks_and_tests_the_rules():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", str(RULE_TESTS)], capture_output=True,
                          text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr


def test_the_dockerfile_runs_serve_as_a_user_with_a_readiness_check():
    # Continuation lines joined, the last stage (the image that runs).
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[-1]
    assert re.search(r"^USER (?!root|0\b)\S+", final, re.M)
    assert re.search(r"^HEALTHCHECK .*presenced.*status", final, re.M)
    assert re.search(r'^CMD \["serve"\]|^ENTRYPOINT .*presenced', final, re.M)

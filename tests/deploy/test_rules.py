"""Recording rules: promtool checks them and runs their unit tests on synthetic series."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.chart import CHART, ROOT, promtool

RULES = CHART / "files" / "rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yaml"

# the metrics contract the gateway, workers and scheduler export (the rules' only inputs)
CONTRACT = {
    "cunliang_requests_total",
    "cunliang_prompt_tokens_total",
    "cunliang_completion_tokens_total",
    "cunliang_usage_cost_yuan_total",
    "cunliang_ttft_seconds_bucket",
    "cunliang_tpot_seconds_bucket",
    "cunliang_e2e_latency_seconds_bucket",
    "cunliang_replica_outstanding_requests",
    "cunliang_replica_up",
    "cunliang_usage_pending_records",
    "cunliang_usage_flush_failures_total",
    "cunliang_usage_last_stored_timestamp_seconds",
    "cunliang_usage_wal_volume_size_bytes",
    "cunliang_usage_wal_volume_available_bytes",
    "cunliang_device_yuan_per_hour",
    "cunliang_device_watts",
    "cunliang_devices",
    "cunliang_replicas",
}
# identifiers in an expression that are not series names
PROMQL_WORDS = {
    "sum", "avg", "count", "max", "min", "by", "on", "group_left", "group_right", "or", "and",
    "unless", "rate", "increase", "histogram_quantile", "round", "le", "scalar", "without",
}  # fmt: skip


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def recorded_names() -> set[str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["record"] for group in rules["groups"] for r in group["rules"] if "record" in r}


def alert_names() -> set[str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects: strings, matchers, ranges, groupings and calls removed."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set(re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", expr))
    return names - PROMQL_WORDS


def test_plain_prometheus_rules_are_the_chart_file() -> None:
    plain = ROOT / "deploy" / "prometheus" / "rules.yaml"
    assert plain.read_bytes() == RULES.read_bytes()


def test_promtool_checks_the_rules() -> None:
    result = _run("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    # one recorded name twice
    found = len(recorded_names()) + 1 + len(alert_names())
    assert f"SUCCESS: {found} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _run("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_tokens_per_yuan_and_joule_at_every_level() -> None:
    tested = RULES_TEST.read_text()
    for level in ("device_class_site", "site", "model", ""):
        assert f"{level}:cunliang_completion_tokens_per_yuan:rate5m" in tested
    for level in ("device_class_site", "model", ""):
        assert f"{level}:cunliang_completion_tokens_per_joule:rate5m" in tested


def test_rules_read_only_the_metrics_contract_and_each_other() -> None:
    rules = yaml.safe_load(RULES.read_text())
    known = CONTRACT | recorded_names()
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = series_names(rule["expr"]) - known
            assert not unknown, f"{rule.get('record') or rule['alert']} reads {unknown}"


def test_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    assert alert_names() and tested == alert_names()

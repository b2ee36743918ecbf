"""Grafana dashboards: the dashboard model's fields, and every PromQL expression parses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART, ROOT, promtool
from tests.deploy.test_rules import recorded_names, series_names

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
PANEL_TYPES = {"timeseries", "stat", "bargauge", "table", "gauge", "text"}


def _load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def _expressions() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and query variable."""
    found = []
    for path in DASHBOARDS:
        board = _load(path)
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.name}/{panel['title']}/{target['refId']}", target["expr"]))
    return found


def _as_promql(expr: str) -> str:
    """Grafana's template variables replaced by values Prometheus accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1d")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def test_three_dashboards_shipped_in_the_chart() -> None:
    assert [p.name for p in DASHBOARDS] == [
        "fleet-economics.json",
        "serving-latency.json",
        "tenant-usage.json",
    ]
    for path in DASHBOARDS:
        assert path.read_bytes() == (CHART / "files" / "dashboards" / path.name).read_bytes()


def test_uids_and_titles_are_unique() -> None:
    boards = [_load(p) for p in DASHBOARDS]
    uids = [b["uid"] for b in boards]
    titles = [b["title"] for b in boards]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid) for uid in uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_model(path: Path) -> None:
    board = _load(path)
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids) and len(ids) >= 6
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"} and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and target["refId"], panel["title"]
            assert target["datasource"] == panel["datasource"]
            # every variable an expression uses is defined
            for name in re.findall(r"\$\{?(\w+)\}?", target["expr"]):
                assert name in variables or name.startswith("__"), (panel["title"], name)


def test_panels_do_not_overlap() -> None:
    for path in DASHBOARDS:
        cells: set[tuple[int, int]] = set()
        for panel in _load(path)["panels"]:
            g = panel["gridPos"]
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & mine, f"{path.name}: {panel['title']} overlaps"
            cells |= mine


def test_dashboards_are_driven_by_the_recording_rules() -> None:
    recorded = recorded_names()
    for where, expr in _expressions():
        names = series_names(_as_promql(expr))
        assert names and names <= recorded, f"{where} reads {names - recorded}"


def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each dashboard expression, and each rule, as a recording rule."""
    expressions = _expressions()
    for path in DASHBOARDS:
        for variable in _load(path)["templating"]["list"]:
            if variable["type"] == "query":
                selector = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
                assert selector, variable["query"]
                expressions.append((f"{path.name}/${variable['name']}", selector.group(1)))
    rules = [
        {"record": f"dashboard:expr_{i}:check", "expr": _as_promql(expr)}
        for i, (_, expr) in enumerate(expressions)
    ]
    file = tmp_path / "dashboards.rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    script = ROOT / "deploy" / "grafana" / "make_dashboards.py"
    subprocess.run(
        [sys.executable, str(script), str(tmp_path)], check=True, capture_output=True, timeout=60
    )
    for path in DASHBOARDS:
        assert (tmp_path / path.name).read_text() == path.read_text(), (
            f"{path.name} differs from deploy/grafana/make_dashboards.py's output: run it"
        )

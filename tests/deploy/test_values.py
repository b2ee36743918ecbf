"""Bad values fail at install time (schema or template check) with a message naming the key."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import helm_python as helm
import pytest

from scheduler import catalog
from scheduler.domain import DeviceKind
from tests.deploy.chart import CHART, chart, fleet_values, render


def _slug(model: str) -> str:
    """Device class slug of a catalogue model: "Xeon Platinum 8480+" -> "xeon-platinum-8480"."""
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


def _with(change: dict[str, Any]) -> dict[str, Any]:
    """The fleet values with ``change`` applied to its first worker group (a GPU group)."""
    values = fleet_values()
    values["workerGroups"][0].update(change)
    return values


def _schema_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart().validate_schema(values)
    # an install renders, and rendering enforces the same schema
    with pytest.raises(helm.HelmValuesError):
        render(values)
    return str(caught.value)


def test_shipped_values_pass_the_schema() -> None:
    chart().validate_schema(None)
    chart().validate_schema(fleet_values())


def test_unknown_device_class_is_rejected() -> None:
    message = _schema_error(_with({"device": "tesla-t5"}))
    assert "at '/workerGroups/0/device': value must be one of 'tesla-p4'" in message


def test_gpu_group_cannot_reference_a_cpu_device_class() -> None:
    message = _schema_error(_with({"device": "xeon-gold-6248"}))
    assert "/workerGroups/0/device" in message


def test_cpu_group_cannot_reference_a_gpu_device_class() -> None:
    values = fleet_values()
    cpu_index = next(i for i, g in enumerate(values["workerGroups"]) if g["kind"] == "cpu")
    values["workerGroups"][cpu_index]["device"] = "tesla-t4"
    message = _schema_error(values)
    assert f"/workerGroups/{cpu_index}/device" in message
    assert "'xeon-gold-6248'" in message  # the message lists the CPU classes


def test_missing_database_secret_without_bundled_postgresql() -> None:
    values = fleet_values()
    del values["database"]["existingSecret"]  # the chart's default is ""
    assert "at '/database/existingSecret': minLength: got 0, want 1" in _schema_error(values)


@pytest.mark.parametrize("key", ["replicas", "minReplicas", "maxReplicas"])
def test_negative_replicas_are_rejected(key: str) -> None:
    message = _schema_error(_with({key: -1}))
    assert f"at '/workerGroups/0/{key}': minimum: got -1, want 0" in message


def test_negative_gateway_replicas_are_rejected() -> None:
    values = fleet_values()
    values["gateway"]["replicas"] = -2
    assert "at '/gateway/replicas': minimum: got -2, want 0" in _schema_error(values)


@pytest.mark.parametrize("bad", ["2 GB", "lots", "-4Gi", "4gi"])
def test_bad_resource_strings_are_rejected(bad: str) -> None:
    values = fleet_values()
    values["gateway"]["resources"] = {"limits": {"memory": bad}}
    assert "/gateway/resources/limits/memory" in _schema_error(values)


def test_misspelt_key_is_rejected() -> None:
    values = copy.deepcopy(fleet_values())
    values["workerGroups"][0]["maxReplica"] = 3
    assert "additional properties 'maxReplica' not allowed" in _schema_error(values)


def test_device_resource_is_set_by_the_chart_not_by_hand() -> None:
    message = _schema_error(_with({"rayStartParams": {"resources": '"{\\"GPU\\": 1}"'}}))
    assert "/workerGroups/0/rayStartParams" in message


def test_same_device_class_twice_fails_the_render() -> None:
    values = fleet_values()
    twin = copy.deepcopy(values["workerGroups"][0])
    twin["name"] = "p40-hohhot-bis"
    values["workerGroups"].append(twin)
    chart().validate_schema(values)  # the schema cannot see it: the template does
    with pytest.raises(helm.HelmRenderError, match='repeats device class "hohhot/tesla-p40"'):
        render(values)


def test_replicas_outside_min_max_fail_the_render() -> None:
    with pytest.raises(helm.HelmRenderError, match="need minReplicas <= replicas <= maxReplicas"):
        render(_with({"minReplicas": 5, "replicas": 1, "maxReplicas": 8}))


def test_lint_reports_bad_values_as_errors() -> None:
    report = helm.lint(CHART, _with({"device": "tesla-t5"}), strict=True)
    assert any("/workerGroups/0/device" in e for e in report["errors"])


def test_schema_device_classes_are_the_catalogue() -> None:
    """The schema's device lists follow scheduler/catalog (deploy/helm/sync_device_classes.py)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    by_kind = {
        rule["if"]["properties"]["kind"]["const"]: rule["then"]["properties"]["device"]["enum"]
        for rule in schema["$defs"]["workerGroup"]["allOf"]
    }
    devices = catalog.devices().values()
    assert by_kind == {  # else run: PYTHONPATH=. python deploy/helm/sync_device_classes.py
        "gpu": [_slug(d.model) for d in devices if d.kind == DeviceKind.GPU],
        "cpu": [_slug(d.model) for d in devices if d.kind == DeviceKind.CPU],
    }

"""Helpers shared by the chart tests: render the chart offline and validate what it renders.

No helm binary and no cluster: ``helm_python`` binds Helm's Go SDK, so rendering, linting
and schema checks are Helm's own. Built-in kinds are validated with ``kubernetes-validate``
(strict: unknown fields fail), custom resources with the schemas in tests/data/crds.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import referencing
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cunliang"
FLEET_VALUES = CHART / "examples" / "values-fleet.yaml"
CRDS = ROOT / "tests" / "data" / "crds"
KUBE_VERSION = "1.30"
RELEASE = "cunliang"
NAMESPACE = "llm"

# kind -> schema file in tests/data/crds
CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): "ray.io_v1_raycluster.schema.json",
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    ): "monitoring.coreos.com_v1_servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.schema.json",
    (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    ): "monitoring.coreos.com_v1_prometheusrule.schema.json",
}


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def fleet_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(FLEET_VALUES.read_text())
    return values


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values``, hooks included, NOTES.txt left out."""
    rendered = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    rendered = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return rendered[f"{CHART.name}/templates/NOTES.txt"]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


@functools.cache
def _k8s_definitions() -> referencing.Resource[Any]:
    """kubernetes-validate's strict Kubernetes definitions, which the RayCluster schema reuses."""
    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = package / f"v{KUBE_VERSION}.0-local-strict" / "_definitions.json"
    return referencing.Resource.from_contents(json.loads(path.read_text()))


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((CRDS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    registry: referencing.Registry[Any] = _k8s_definitions() @ referencing.Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` does not match its Kubernetes or CRD schema."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(obj)
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, pod spec) for every pod template the chart renders, Ray groups included."""
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield name, o["spec"]["template"]["spec"]
        elif o["kind"] == "RayCluster":
            yield f"{name}/head", o["spec"]["headGroupSpec"]["template"]["spec"]
            for group in o["spec"].get("workerGroupSpecs", []):
                yield f"{name}/{group['groupName']}", group["template"]["spec"]


def promtool() -> str:
    """The promtool binary; a clear failure, not a skip, when it is missing."""
    path = shutil.which("promtool")
    assert path, (
        "promtool not found: install Debian's prometheus package "
        "(apt-get install -y prometheus, done by scripts/system-deps.sh)"
    )
    return path

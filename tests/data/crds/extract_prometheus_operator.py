"""Extract the JSON schemas of prometheus-operator's monitoring.coreos.com/v1 resources.

Source: the PyPI package ``cloudcoil.models.prometheus_operator`` (Apache-2.0), whose
pydantic models are generated from prometheus-operator's CRDs (its version is the
operator's, plus a build number). Run it in a throwaway virtualenv, not the project's:

    python3 -m venv /tmp/ccvenv
    /tmp/ccvenv/bin/pip install 'cloudcoil.models.prometheus_operator==0.80.1.0'
    /tmp/ccvenv/bin/python tests/data/crds/extract_prometheus_operator.py

It writes ``monitoring.coreos.com_v1_<kind>.schema.json`` beside itself. One change is made
to the models' schema: every object that declares its properties gets
``additionalProperties: false``. The CRDs are structural, so the API server prunes unknown
fields silently; rejecting them here makes a misspelt field in the chart fail the tests
instead of vanishing at install.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cloudcoil.models.prometheus_operator import v1

PACKAGE = "cloudcoil.models.prometheus_operator"
KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def _close_objects(node: Any) -> None:
    """Forbid undeclared fields on every object schema that lists its properties."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


def extract(kind: str) -> dict[str, Any]:
    model = getattr(v1, kind)
    schema: dict[str, Any] = model.model_json_schema(by_alias=True, mode="validation")
    _close_objects(schema)
    schema["required"] = sorted(
        {*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"}
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"{kind} (monitoring.coreos.com/v1), extracted from the PyPI package {PACKAGE} "
            f"{version(PACKAGE)} by extract_prometheus_operator.py; additionalProperties: false added."
        ),
        **schema,
    }


def main() -> None:
    here = Path(__file__).parent
    for kind in KINDS:
        path = here / f"monitoring.coreos.com_v1_{kind.lower()}.schema.json"
        path.write_text(json.dumps(extract(kind), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path.name}")


if __name__ == "__main__":
    main()

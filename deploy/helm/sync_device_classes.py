"""Rewrite the device lists of the chart's values.schema.json from the device catalogue.

A worker group's ``device`` must be the slug of a catalogue device of its kind
("Xeon Platinum 8480+" -> "xeon-platinum-8480"). Run after the catalogue changes:

    PYTHONPATH=. python deploy/helm/sync_device_classes.py

tests/deploy/test_values.py fails while the schema and the catalogue disagree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scheduler import catalog
from scheduler.domain import DeviceKind

SCHEMA = Path(__file__).parent / "cunliang" / "values.schema.json"


def slug(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


def main() -> None:
    schema = json.loads(SCHEMA.read_text())
    devices = catalog.devices().values()
    for rule in schema["$defs"]["workerGroup"]["allOf"]:
        kind = DeviceKind(rule["if"]["properties"]["kind"]["const"])
        rule["then"]["properties"]["device"]["enum"] = [
            slug(d.model) for d in devices if d.kind == kind
        ]
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"updated {SCHEMA}")


if __name__ == "__main__":
    main()

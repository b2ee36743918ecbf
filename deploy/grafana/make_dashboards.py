"""Write cunliang's Grafana dashboards (fleet economics, serving latency, tenant usage).

The JSON files are the artefact: the chart ships them from
deploy/helm/cunliang/files/dashboards/ (as ConfigMaps labelled grafana_dashboard: "1") and
deploy/grafana/ links to them. Every query reads a recording rule of
deploy/helm/cunliang/files/rules.yaml. Edit this file, then run

    python deploy/grafana/make_dashboards.py

tests/deploy/test_dashboards.py fails when the committed JSON and this script disagree.
"""

from __future__ import annotations

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parents[1] / "helm" / "cunliang" / "files" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}


def var_query(name, label, query, multi=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": multi,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
        "sort": 1,
        "hide": 0,
        "options": [],
    }


DATASOURCE = {
    "name": "datasource",
    "label": "Prometheus",
    "type": "datasource",
    "query": "prometheus",
    "current": {},
    "hide": 0,
    "refresh": 1,
    "regex": "",
    "options": [],
}
COST = {
    "name": "cost",
    "label": "Cost",
    "type": "custom",
    "query": "full,marginal",
    "current": {"selected": True, "text": "full", "value": "full"},
    "hide": 0,
    "multi": False,
    "includeAll": False,
    "options": [
        {"selected": True, "text": "full", "value": "full"},
        {"selected": False, "text": "marginal", "value": "marginal"},
    ],
    "description": "full = marginal + capex amortisation; marginal = power and operations",
}


class Board:
    def __init__(self):
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def add(self, type_, title, targets, unit, w=12, h=8, description="", **extra):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        panel = {
            "id": len(self.panels) + 1,
            "type": type_,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": [
                {
                    "refId": chr(65 + i),
                    "datasource": DS,
                    "expr": expr,
                    "legendFormat": legend,
                    "range": True,
                    "instant": False,
                }
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
        }
        if type_ == "timeseries":
            panel["options"] = {
                "legend": {
                    "displayMode": "table",
                    "placement": "right",
                    "calcs": ["lastNotNull", "mean"],
                },
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        if type_ == "stat":
            panel["options"] = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "area",
            }
        panel.update(extra)
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def dashboard(uid, title, description, board, variables, tags):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["cunliang", *tags],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "timezone": "",
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["cunliang"],
                "asDropdown": True,
                "title": "cunliang",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [DATASOURCE, *variables]},
        "panels": board.panels,
    }


# --- fleet economics
b = Board()
b.add(
    "stat",
    "Fleet tokens per yuan ($cost cost)",
    [(':cunliang_completion_tokens_per_yuan:rate5m{cost="$cost"}', "tokens/yuan")],
    "none",
    w=6,
    h=5,
    description="Output tokens per yuan the powered devices cost, fleet-wide",
)
b.add(
    "stat",
    "Fleet tokens per joule",
    [(":cunliang_completion_tokens_per_joule:rate5m", "tokens/J")],
    "none",
    w=6,
    h=5,
    description="Output tokens per joule; measured power where available, modelled elsewhere",
)
b.add(
    "stat",
    "Fleet cost (yuan/h)",
    [(':cunliang_device_yuan_per_hour:sum{cost="$cost"}', "yuan/h")],
    "currencyCNY",
    w=6,
    h=5,
)
b.add(
    "stat",
    "Output tokens/s",
    [(":cunliang_completion_tokens:rate5m", "tokens/s")],
    "none",
    w=6,
    h=5,
)
b.add(
    "timeseries",
    "Tokens per yuan by device class",
    [
        (
            'device_class_site:cunliang_completion_tokens_per_yuan:rate5m{cost="$cost", site=~"$site"}',
            "{{device_class}}",
        )
    ],
    "none",
)
b.add(
    "timeseries",
    "Tokens per joule by device class",
    [
        (
            'device_class_site:cunliang_completion_tokens_per_joule:rate5m{site=~"$site"}',
            "{{device_class}}",
        )
    ],
    "none",
)
b.add(
    "timeseries",
    "Tokens per yuan by model",
    [
        (
            'model:cunliang_completion_tokens_per_yuan:rate5m{cost="$cost", model=~"$model"}',
            "{{model}}",
        )
    ],
    "none",
    description="Each model carries its share of the cost of the device classes its replicas run on",
)
b.add(
    "timeseries",
    "Tokens per joule by model",
    [('model:cunliang_completion_tokens_per_joule:rate5m{model=~"$model"}', "{{model}}")],
    "none",
)
b.add(
    "timeseries",
    "Cost by site (yuan/h)",
    [('site:cunliang_device_yuan_per_hour:sum{cost="$cost", site=~"$site"}', "{{site}}")],
    "currencyCNY",
    fieldConfig={
        "defaults": {
            "unit": "currencyCNY",
            "custom": {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30},
        },
        "overrides": [],
    },
)
b.add(
    "timeseries",
    "Power by site (W)",
    [('site:cunliang_device_watts:best{site=~"$site"}', "{{site}}")],
    "watt",
)
b.add(
    "bargauge",
    "Devices in service (admitted share)",
    [('device_class_site:cunliang_devices:admitted_ratio{site=~"$site"}', "{{device_class}}")],
    "percentunit",
    options={
        "orientation": "horizontal",
        "displayMode": "gradient",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    },
)
b.add(
    "timeseries",
    "Replicas running vs planned",
    [('model:cunliang_replicas:running_ratio{model=~"$model"}', "{{model}}")],
    "percentunit",
)
fleet = dashboard(
    "cunliang-fleet-economics",
    "cunliang / Fleet economics",
    "Tokens per yuan and per joule, cost and utilisation of the fleet, from the cunliang recording rules.",
    b,
    [
        COST,
        var_query(
            "site",
            "Site",
            "label_values(device_class_site:cunliang_device_yuan_per_hour:sum, site)",
        ),
        var_query("model", "Model", "label_values(model:cunliang_completion_tokens:rate5m, model)"),
    ],
    ["economics"],
)

# --- serving latency
b = Board()
for metric, title in (
    ("ttft", "Time to first token"),
    ("tpot", "Time per output token"),
    ("e2e_latency", "End-to-end latency"),
):
    b.add(
        "timeseries",
        f"{title} (p50 / p90 / p99)",
        [
            (f'model:cunliang_{metric}_seconds:{q}{{model=~"$model"}}', f"{{{{model}}}} {q}")
            for q in ("p50", "p90", "p99")
        ],
        "s",
        w=8,
    )
b.add(
    "timeseries",
    "Requests/s by status",
    [('sum by (status) (model_status:cunliang_requests:rate5m{model=~"$model"})', "{{status}}")],
    "reqps",
)
b.add(
    "timeseries",
    "Error ratio (non-2xx)",
    [('model:cunliang_requests_errors:ratio_rate5m{model=~"$model"}', "{{model}}")],
    "percentunit",
)
b.add(
    "timeseries",
    "Outstanding requests per replica",
    [
        (
            'model_device_class_site:cunliang_replica_outstanding_requests:avg{model=~"$model"}',
            "{{model}} on {{device_class}}",
        )
    ],
    "none",
)
b.add(
    "timeseries",
    "Replicas ready",
    [
        (
            'model_device_class_site:cunliang_replicas_ready:count{model=~"$model"}',
            "{{model}} on {{device_class}}",
        )
    ],
    "none",
)
b.add(
    "timeseries",
    "Replicas by state",
    [('model_state:cunliang_replicas_known:count{model=~"$model"}', "{{model}} {{state}}")],
    "none",
)
b.add(
    "timeseries",
    "Output tokens/s by model",
    [('model:cunliang_completion_tokens:rate5m{model=~"$model"}', "{{model}}")],
    "none",
)
b.add(
    "timeseries",
    "Prompt tokens/s by model",
    [('model:cunliang_prompt_tokens:rate5m{model=~"$model"}', "{{model}}")],
    "none",
)
serving = dashboard(
    "cunliang-serving-latency",
    "cunliang / Serving latency",
    "TTFT, TPOT and end-to-end latency quantiles, request rates and replica load per model.",
    b,
    [var_query("model", "Model", "label_values(model:cunliang_completion_tokens:rate5m, model)")],
    ["serving"],
)

# --- tenant usage
b = Board()
b.add(
    "stat",
    "Billed (yuan/h)",
    [(":cunliang_usage_cost_yuan_per_hour:rate5m", "yuan/h")],
    "currencyCNY",
    w=8,
    h=5,
)
b.add(
    "stat",
    "Output tokens/s",
    [
        (
            'sum(tenant_model:cunliang_completion_tokens:rate5m{tenant=~"$tenant", model=~"$model"})',
            "tokens/s",
        )
    ],
    "none",
    w=8,
    h=5,
)
b.add(
    "stat",
    "Prompt tokens/s",
    [
        (
            'sum(tenant_model:cunliang_prompt_tokens:rate5m{tenant=~"$tenant", model=~"$model"})',
            "tokens/s",
        )
    ],
    "none",
    w=8,
    h=5,
)
b.add(
    "timeseries",
    "Billed by tenant (yuan/h)",
    [
        (
            'sum by (tenant) (tenant_model:cunliang_usage_cost_yuan_per_hour:rate5m{tenant=~"$tenant", model=~"$model"})',
            "{{tenant}}",
        )
    ],
    "currencyCNY",
)
b.add(
    "timeseries",
    "Output tokens/s by tenant",
    [
        (
            'sum by (tenant) (tenant_model:cunliang_completion_tokens:rate5m{tenant=~"$tenant", model=~"$model"})',
            "{{tenant}}",
        )
    ],
    "none",
)
b.add(
    "timeseries",
    "Prompt tokens/s by tenant",
    [
        (
            'sum by (tenant) (tenant_model:cunliang_prompt_tokens:rate5m{tenant=~"$tenant", model=~"$model"})',
            "{{tenant}}",
        )
    ],
    "none",
)
b.add(
    "timeseries",
    "Requests/s by tenant and status",
    [
        (
            'sum by (tenant, status) (tenant_model_status:cunliang_requests:rate5m{tenant=~"$tenant", model=~"$model"})',
            "{{tenant}} {{status}}",
        )
    ],
    "reqps",
)
b.add(
    "table",
    "Billed over the last day (yuan)",
    [('tenant:cunliang_usage_cost_yuan:increase1d{tenant=~"$tenant"}', "{{tenant}}")],
    "currencyCNY",
    w=24,
    options={"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]},
)
b.panels[-1]["targets"][0].update({"instant": True, "range": False, "format": "table"})
b.add(
    "timeseries",
    "Usage records waiting for the database",
    [("instance:cunliang_usage_pending_records:sum", "{{instance}}")],
    "none",
    w=12,
    description="Per gateway: usage records not stored yet. A second's worth is normal (the "
    "flush runs once a second); a rising line means the database refuses the flushes and "
    "the records wait in the gateway's write-ahead log (alert CunliangUsageNotStored).",
)
b.add(
    "timeseries",
    "Room left for the usage write-ahead log",
    [("instance:cunliang_usage_wal_volume_available:ratio", "{{instance}}")],
    "percentunit",
    w=12,
    description="Per gateway: the share of its write-ahead log's file system still free. "
    "Records of a database outage wait there, about 250 bytes each; once it is full no usage "
    "record can be written (alert CunliangUsageWalVolumeFilling).",
)
tenants = dashboard(
    "cunliang-tenant-usage",
    "cunliang / Tenant usage",
    "What each tenant used and is billed, per model.",
    b,
    [
        var_query(
            "tenant",
            "Tenant",
            "label_values(tenant:cunliang_usage_cost_yuan_per_hour:rate5m, tenant)",
        ),
        var_query(
            "model", "Model", "label_values(tenant_model:cunliang_completion_tokens:rate5m, model)"
        ),
    ],
    ["tenants"],
)

DASHBOARDS = {"fleet-economics": fleet, "serving-latency": serving, "tenant-usage": tenants}


def main(out: pathlib.Path) -> None:
    for name, board in DASHBOARDS.items():
        (out / f"{name}.json").write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {out / name}.json ({len(board['panels'])} panels)")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)

"""cunliang scheduler: inventory, cost/perf models, placement, runtime, gateway, CLI."""

__version__ = "0.1.0"

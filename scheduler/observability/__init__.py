"""Prometheus metrics: every cunliang metric is declared in ``metrics.py``."""

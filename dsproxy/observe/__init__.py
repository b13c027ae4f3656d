"""Observability: records, metrics, access log, log setup, admin listener."""

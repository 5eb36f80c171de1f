"""Observability: the per-request record, metrics, access log, trace context, JSON logs."""

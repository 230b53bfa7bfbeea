"""Telemetry the gateway emits: structured logs, the audit trail and Prometheus metrics."""

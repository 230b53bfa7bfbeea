"""Telemetry the gateway emits: structured logs now; metrics and audit join here."""

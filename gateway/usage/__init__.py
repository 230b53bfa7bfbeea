"""`llm-gateway usage`: what each team (or model) used, read from the audit trail.

Streams audit files in bounded memory: `audit_files` reads them as they lie on disk (plain
or compressed, rotated, lines cut by a crash), `latency` is the fixed-size histogram that
gives p50 and p95 within a stated error, `report` aggregates the lines into groups (counts,
errors by code, tokens, latency, cost from the configured prices) and `render` prints the
result as a table, CSV or JSON. The command line's wiring is in `gateway.cli`.
"""

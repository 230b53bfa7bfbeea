"""The audit trail, written on the way out: one record per API request, whatever happened
to it (refused, blocked, failed, aborted or answered), for compliance reviews. It names who
asked what of which model and upstream, the outcome and error code, the tokens, the policies and
compliance regime applied and the safety verdicts; for a refused authentication, why, the
client address and the presented key's fingerprint. It never holds message content or keys.

Reads: everything the other stages decided. Writes: nothing on the exchange.
"""

from __future__ import annotations

from gateway.observability.logs import LineLog
from gateway.pipeline import Exchange, Stage


class Audit(Stage):
    name = "audit"

    def __init__(self, log: LineLog) -> None:
        self._log = log

    def leave(self, exchange: Exchange) -> None:
        failure = exchange.auth_failure
        self._log.info(
            "audit",
            **exchange.summary(),
            error_code=exchange.error_code,
            method=exchange.http.method,
            attempts=exchange.call.attempts,
            policies=[] if exchange.team is None else list(exchange.team.policy.names),
            compliance="hipaa" if exchange.hipaa else "none",
            safety_verdict=exchange.safety_verdict,
            answer_safety_verdict=exchange.answer_verdict,
            auth_failure=None if failure is None else failure.reason,
            client_address=None if failure is None else failure.client,
            key_fingerprint=None if failure is None else failure.key_fingerprint,
        )

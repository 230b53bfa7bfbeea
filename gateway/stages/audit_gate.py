"""The audit gate: while the audit trail cannot be written, requests that may not be served
unaudited are refused with 503 `audit_unavailable`, before any upstream or safety-model
call and before the rate limiter charges them. Which requests: every one with
`audit.on_failure: refuse`, those under HIPAA whatever it says (the HIPAA policy promises
that every request is audited).

The refused requests are still audited on their way out (the audit stage is entered first
and leaves last): each of their lines is an attempt, and the first one written makes the
trail available again (see `observability.audit_trail`), so the gateway serves again by
itself once space is freed or the file can be written.

Reads: the trail's `available`, `hipaa` (the team's forced regime, or the policy stage's
decision, which is why the gate stands after it). Writes: nothing on the exchange.
"""

from __future__ import annotations

from typing import Literal

from gateway.errors import AuditUnavailable
from gateway.observability.audit_trail import AuditTrail
from gateway.pipeline import Exchange, Stage


class AuditGate(Stage):
    name = "audit_gate"

    def __init__(self, trail: AuditTrail, on_failure: Literal["continue", "refuse"]) -> None:
        self._trail = trail
        self._refuse_every_request = on_failure == "refuse"

    async def enter(self, exchange: Exchange) -> None:
        if self._trail.available:
            return
        if self._refuse_every_request or exchange.hipaa:
            raise AuditUnavailable(
                "The gateway cannot write its audit trail and does not serve requests it "
                "cannot audit; retry later."
            )

"""Upstream stage: the call to the model's upstreams (pick, call, retry; see
`upstream.caller`), and on the way out the release of a stream's upstream connection.

Reads: `policy` (the route, the class), `team` (its line for capacity), `translation`,
`request` (stream or not), `trace` (when tracing: the attempts' spans). Writes: `answer`,
and through the caller `call` (where each attempt went, how long it waited for capacity).
"""

from __future__ import annotations

from gateway.pipeline import Exchange, Stage, need
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.client import StreamAnswer


class CallUpstream(Stage):
    name = "upstream"

    def __init__(self, caller: UpstreamCaller) -> None:
        self._caller = caller

    async def enter(self, exchange: Exchange) -> None:
        policy = need(exchange.policy, "the policy decision")
        exchange.answer = await self._caller.call(
            policy.route,
            need(exchange.translation, "the translation"),
            exchange.stream,
            exchange.request_id,
            exchange.call,
            policy.claimant or need(exchange.team, "the team").queue_claimant,
            exchange.trace,
        )

    def leave(self, exchange: Exchange) -> None:
        if isinstance(exchange.answer, StreamAnswer):
            # Closing an unfinished stream drops its connection: the upstream stops
            # generating for a client that left.
            exchange.answer.close()

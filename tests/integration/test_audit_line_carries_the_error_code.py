"""The audit line names the `code` of the error body a request was answered with (what
`llm-gateway usage` counts errors by), and null for an answer that is not an error: two 429s
of different causes are told apart, the team's limit from the upstream's."""

from __future__ import annotations

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    OTHER_TEAM_KEY,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
    post_chat,
)


async def test_the_audit_line_carries_the_code_the_client_was_answered_with(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 2}
    raw["retries"] = {"max_attempts": 1}
    gateway = await start_gateway(raw)

    answered = (await post_chat(gateway, chat_body())).status
    upstream.state.script.append(Behavior(status=429))
    upstream_limited = await post_chat(gateway, chat_body())
    team_limited = await post_chat(gateway, chat_body())
    bad_key = await post_chat(gateway, chat_body(), headers=auth("gw-no-such-key-0123456789"))
    # A key the gateway knows, for a model the team may not use: 404 with its own code.
    not_allowed = await post_chat(gateway, chat_body(), headers=auth(OTHER_TEAM_KEY))

    statuses = [
        answered,
        upstream_limited.status,
        team_limited.status,
        bad_key.status,
        not_allowed.status,
    ]
    codes = [
        reply.json()["error"]["code"]
        for reply in (upstream_limited, team_limited, bad_key, not_allowed)
    ]
    audits = gateway.log_records("audit")
    assert statuses == [200, 429, 429, 401, 404]
    assert [(a["status"], a["error_code"]) for a in audits] == [
        (200, None),
        (429, "upstream_rate_limited"),
        (429, "rate_limit_exceeded"),
        (401, "invalid_api_key"),
        (404, "model_not_found"),
    ]
    assert [a["error_code"] for a in audits[1:]] == codes

"""The pipeline: stages are entered in order until one answers or fails, and every stage that
was entered leaves, in reverse order, however the request ended (Envoy's decode and encode
paths). A refusal is recorded on the exchange, a bug becomes a 500, a departed client is
marked and the cancellation goes on."""

from __future__ import annotations

import asyncio
import io

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config import ServerConfig
from gateway.errors import InvalidRequest
from gateway.observability.logs import make_logger
from gateway.pipeline import CLIENT_CLOSED, Exchange, Pipeline, Stage, StageOrderError, need


class Step(Stage):
    """A stage that records its visits, and may fail on the way in or out."""

    def __init__(
        self,
        name: str,
        trail: list[str],
        fails: BaseException | None = None,
        *,
        bad_leave: bool = False,
    ) -> None:
        self.name = name
        self._trail = trail
        self._fails = fails
        self._bad_leave = bad_leave

    async def enter(self, exchange: Exchange) -> None:
        self._trail.append(f"enter {self.name}")
        if self._fails is not None:
            raise self._fails

    def leave(self, exchange: Exchange) -> None:
        self._trail.append(f"leave {self.name}")
        if self._bad_leave:
            raise RuntimeError("a bug on the way out")


def exchange() -> Exchange:
    return Exchange(request_id="r1", http=make_mocked_request("POST", "/v1/chat/completions"))


def pipeline(*stages: Stage) -> tuple[Pipeline, io.StringIO]:
    log = io.StringIO()
    return Pipeline(stages, make_logger(ServerConfig(), log)), log


async def test_stages_enter_in_order_and_leave_in_reverse() -> None:
    trail: list[str] = []
    run, _ = pipeline(Step("a", trail), Step("b", trail), Step("c", trail))

    await run.run(exchange())

    assert trail == ["enter a", "enter b", "enter c", "leave c", "leave b", "leave a"]
    assert run.names == ["a", "b", "c"]


async def test_a_refusal_ends_the_way_in_and_only_entered_stages_leave() -> None:
    trail: list[str] = []
    refusal = InvalidRequest("no", param="x")
    run, _ = pipeline(Step("a", trail), Step("b", trail, refusal), Step("c", trail))
    ex = exchange()

    await run.run(ex)

    assert trail == ["enter a", "enter b", "leave b", "leave a"]
    assert ex.error is refusal and ex.status == 400
    assert ex.reply().status == 400


async def test_a_bug_in_a_stage_is_a_500_named_in_the_log_without_its_message() -> None:
    trail: list[str] = []
    run, log = pipeline(Step("a", trail), Step("b", trail, KeyError("patient-name")))
    ex = exchange()

    await run.run(ex)

    assert ex.status == 500 and ex.error is not None and ex.error.code == "internal_error"
    assert "KeyError" in log.getvalue() and "patient-name" not in log.getvalue()
    assert trail[-2:] == ["leave b", "leave a"]


async def test_a_stage_that_fails_on_the_way_out_does_not_skip_the_others() -> None:
    trail: list[str] = []
    run, log = pipeline(Step("a", trail), Step("b", trail, bad_leave=True), Step("c", trail))

    await run.run(exchange())

    assert trail[-3:] == ["leave c", "leave b", "leave a"]
    assert "stage_leave_failed" in log.getvalue()


async def test_a_client_that_leaves_marks_the_exchange_and_the_cancellation_goes_on() -> None:
    trail: list[str] = []
    run, _ = pipeline(Step("a", trail), Step("b", trail, asyncio.CancelledError()))
    ex = exchange()

    with pytest.raises(asyncio.CancelledError):
        await run.run(ex)

    assert ex.aborted and ex.status == CLIENT_CLOSED and ex.outcome == "client_aborted"
    assert trail[-2:] == ["leave b", "leave a"]


def test_a_stage_reading_what_no_earlier_stage_wrote_is_a_bug_not_a_none() -> None:
    with pytest.raises(StageOrderError):
        need(exchange().route, "the route")

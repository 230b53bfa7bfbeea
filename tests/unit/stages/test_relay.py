"""The relay stage on its own: a whole answer goes out as it came; a stream's events go out
as they came, those that arrived together in one write; the usage chunk the gateway asked
for is noted (and shown only to a client that asked for it too), and content events are
counted for when no usage comes."""

from __future__ import annotations

from aiohttp import web

from gateway.accounting import Usage
from gateway.pipeline import RelayRecord
from gateway.stages.relay import LiveStreams, Relay, _forward
from gateway.upstream.client import JsonAnswer
from tests.conftest import an_exchange

CONTENT = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
DONE = b"data: [DONE]\n\n"


class Captured(web.StreamResponse):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))


async def test_a_whole_answer_goes_out_as_the_upstream_gave_it() -> None:
    exchange = an_exchange(answer=JsonAnswer(b'{"id":"x"}', Usage(1, 2)))

    await Relay(LiveStreams()).enter(exchange)

    assert exchange.response is not None and exchange.response.status == 200
    assert isinstance(exchange.response, web.Response) and exchange.response.body == b'{"id":"x"}'


async def test_the_usage_chunk_is_noted_and_shown_only_to_a_client_that_asked() -> None:
    for client_asked in (False, True):
        relayed, response = RelayRecord(), Captured()

        done = [
            await _forward([e], response, relayed, client_asked) for e in (CONTENT, USAGE, DONE)
        ]

        assert done == [False, False, True]
        assert relayed.usage == Usage(3, 1)
        assert response.written == ([CONTENT, USAGE, DONE] if client_asked else [CONTENT, DONE])
        assert relayed.content_events == (2 if client_asked else 1)


async def test_events_that_arrived_together_go_out_in_one_write_up_to_done() -> None:
    relayed, response = RelayRecord(), Captured()

    done = await _forward([CONTENT, CONTENT, USAGE, DONE, CONTENT], response, relayed, False)

    assert done
    assert response.written == [CONTENT + CONTENT + DONE]
    assert (relayed.content_events, relayed.usage) == (2, Usage(3, 1))

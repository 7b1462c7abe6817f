"""What each node client puts on the wire, and how it reads the answer back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from openai_proxy.nodes.base import GenerationParams, NodeChunk, NodeFailure, NodeRequest
from openai_proxy.nodes.clients import client_for_url
from openai_proxy.nodes.clients.http import node_session
from openai_proxy.templates import ChatMessage


def request(temperature: float = 0.0, messages: tuple[ChatMessage, ...] | None = None) -> NodeRequest:
    return NodeRequest(
        model="org/model",
        prompt="PROMPT",
        prompt_tokens=10,
        params=GenerationParams(max_new_tokens=7, temperature=temperature, top_p=0.5, seed=3),
        stops=("<|eot_id|>", "STOP"),
        messages=messages,
    )


async def collect(stream: AsyncIterator[NodeChunk]) -> list[NodeChunk]:
    return [chunk async for chunk in stream]


def recording_client(answer: httpx.Response, seen: list[httpx.Request]) -> httpx.AsyncClient:
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return answer

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("temperature", "sampling"), [(0.0, False), (0.7, True)])
async def test_plumise_node_gets_json_and_greedy_for_zero_temperature(temperature: float, sampling: bool) -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(200, json={"generated_text": "hi there", "num_tokens": 2})
    async with recording_client(answer, seen) as http:
        client = client_for_url("http://node:1", http, timeout=1)
        chunks = await collect(client.generate(request(temperature)))
    body = json.loads(seen[0].content)
    assert seen[0].url == "http://node:1/api/v1/generate"
    assert body["inputs"] == "PROMPT"
    assert body["parameters"] == {"max_new_tokens": 7, "temperature": temperature, "top_p": 0.5, "do_sample": sampling}
    assert chunks == [NodeChunk(text="hi there", total_tokens=2)]


async def test_petals_http_sends_form_fields_and_reads_ok_false_as_failure() -> None:
    seen: list[httpx.Request] = []
    async with recording_client(httpx.Response(200, json={"ok": True, "outputs": "abc"}), seen) as http:
        client = client_for_url("petals+http://node:2", http, timeout=1)
        assert [c.text for c in await collect(client.generate(request()))] == ["abc"]
    form = {k: v[0] for k, v in parse_qs(seen[0].content.decode()).items()}
    assert form == {"model": "org/model", "inputs": "PROMPT", "max_new_tokens": "7", "do_sample": "0"}
    async with recording_client(httpx.Response(200, json={"ok": False, "traceback": "boom"}), []) as http:
        client = client_for_url("petals+http://node:2", http, timeout=1)
        with pytest.raises(NodeFailure):
            await collect(client.generate(request()))


@asynccontextmanager
async def sse_node(
    sse: str, seen: list[tuple[str, dict[str, Any]]], status: int = 200, *, one_write: bool = False
) -> AsyncIterator[str]:
    """A loopback OpenAI-compatible node that records each request and answers `sse` (chunked, as a real
    node streams it, or in one write); yields the node's `openai+http://` base URL."""

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, await request.json()))
        if status >= 400:
            return web.Response(status=status, text=sse)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in [sse] if one_write else sse.split("\n\n"):  # one write per event, like a node producing tokens
            if event:
                await response.write(event.encode() + b"\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    app.router.add_post("/v1/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"openai+http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_openai_node_gets_messages_for_chat_and_prompt_for_continuations() -> None:
    sse = (
        'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
        'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
        'data: {"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
        'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
        "data: [DONE]\n\n"
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    async with sse_node(sse, seen) as url, httpx.AsyncClient() as http, node_session(1) as session:
        client = client_for_url(f"{url}/v1", http, timeout=1, session=session)
        chat = await collect(client.generate(request(messages=(ChatMessage("user", "Hi"),))))
        await collect(client.generate(request()))
        connector = session.connector
        assert connector is not None
        # Both answers were read to their end, so the second reused the first one's connection.
        assert sum(len(c) for c in connector._conns.values()) == 1
    assert seen[0][0] == "/v1/chat/completions"
    body = seen[0][1]
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 7 and body["stream"] is True and body["seed"] == 3
    assert seen[1][0] == "/v1/completions" and seen[1][1]["prompt"] == "PROMPT"
    assert "".join(c.text for c in chat) == "Hello"
    assert chat[-1].total_tokens == 2
    assert any(c.finish_reason == "stop" for c in chat)


async def test_closing_an_openai_stream_early_gives_its_connection_back() -> None:
    sse = "".join(f'data: {{"choices":[{{"delta":{{"content":"w{i}"}}}}]}}\n\n' for i in range(50)) + "data: [DONE]\n\n"
    async with sse_node(sse, []) as url, httpx.AsyncClient() as http, node_session(1) as session:
        client = client_for_url(url, http, timeout=1, session=session)
        stream = client.generate(request())
        assert (await anext(stream)).text.startswith("w0")  # the events of one network read come as one chunk
        await stream.aclose()  # a client that left, or a stop string: the node's answer is abandoned
        connector = session.connector
        assert connector is not None
        assert not connector._acquired  # released (closed, since its body was not read to the end)
        assert "".join(c.text for c in await collect(client.generate(request()))) == "".join(f"w{i}" for i in range(50))


async def test_the_events_of_one_read_come_as_one_chunk_with_exact_counts() -> None:
    # A zero-delay node's whole answer arrives in one read: one chunk, one token per text event. An error
    # event after text hands that text on first, so a continuation elsewhere starts where this node stopped.
    words = "".join(f'data: {{"choices":[{{"delta":{{"content":"w{i} "}}}}]}}\n\n' for i in range(5))
    async with sse_node(words + "data: [DONE]\n\n", [], one_write=True) as url, httpx.AsyncClient() as http, \
            node_session(1) as session:
        chunks = await collect(client_for_url(url, http, timeout=1, session=session).generate(request()))
    assert chunks == [NodeChunk(text="w0 w1 w2 w3 w4 ", tokens=5)]
    broken = words + 'data: {"error": {"message": "out of memory"}}\n\n'
    async with sse_node(broken, [], one_write=True) as url, httpx.AsyncClient() as http, \
            node_session(1) as session:
        stream = client_for_url(url, http, timeout=1, session=session).generate(request())
        assert await anext(stream) == NodeChunk(text="w0 w1 w2 w3 w4 ", tokens=5)
        with pytest.raises(NodeFailure, match="out of memory"):
            await anext(stream)


@pytest.mark.parametrize(("bad_event", "problem"), [
    ('{"choices":[{"delta":{"content":"x"}}]},{"choices":[{"delta":{"content":"y"}}]}', "unparsable"),
    ('{"choices":[{"delta":{"content":"x"}}', "unparsable"),
    ('[1, 2]', "not an object"),
    ('{"choices":{"0":{"delta":{"content":"x"}}}}', None),  # not a list: no text, not a crash
])
async def test_a_read_decoded_in_one_pass_still_judges_each_event_alone(bad_event: str, problem: str | None) -> None:
    # The events of one read are decoded as one JSON array; an event holding two values, or half of one, must
    # still fail the node after the text before it, exactly as if each event were decoded alone.
    good = 'data: {"choices":[{"delta":{"content":"a "}}]}\n\n'
    body = good + f"data: {bad_event}\n\n" + good + "data: [DONE]\n\n"
    async with sse_node(body, [], one_write=True) as url, httpx.AsyncClient() as http, node_session(1) as session:
        stream = client_for_url(url, http, timeout=1, session=session).generate(request())
        if problem is None:
            assert await collect(stream) == [NodeChunk(text="a a ", tokens=2)]
            return
        assert await anext(stream) == NodeChunk(text="a ", tokens=1)
        with pytest.raises(NodeFailure, match=problem):
            await anext(stream)


async def test_openai_node_error_event_missing_done_and_error_status_are_failures() -> None:
    cases = [('data: {"error": {"message": "x"}}\n\n', 200), ('data: {"choices":[{"delta":{"content":"a"}}]}\n\n', 200),
             ('{"error": "overloaded"}', 503)]
    for sse, status in cases:
        async with sse_node(sse, [], status) as url, httpx.AsyncClient() as http, node_session(1) as session:
            client = client_for_url(url, http, timeout=1, session=session)
            with pytest.raises(NodeFailure):
                await collect(client.generate(request()))


async def test_openai_node_that_cannot_be_reached_is_an_unreachable_failure() -> None:
    async with sse_node("", []) as url:
        pass  # the port is closed again
    async with httpx.AsyncClient() as http, node_session(1) as session:
        client = client_for_url(url, http, timeout=1, session=session)
        with pytest.raises(NodeFailure) as caught:
            await collect(client.generate(request()))
    assert caught.value.unreachable


async def test_petals_ws_opens_a_sized_session_streams_one_token_per_step_and_stops_at_max() -> None:
    received: list[dict[str, Any]] = []

    async def node(socket: ServerConnection) -> None:
        async for raw in socket:
            message = json.loads(raw)
            received.append(message)
            if message["type"] == "open_inference_session":
                await socket.send(json.dumps({"ok": True}))
            else:
                for _ in range(100):  # a node with no bound of its own: the client must stop it
                    await socket.send(json.dumps({"ok": True, "outputs": " w", "stop": False, "token_count": 1}))

    async with serve(node, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as http:
            client = client_for_url(f"petals+ws://127.0.0.1:{port}", http, timeout=2)
            chunks = await collect(client.generate(request()))
    opened, generate = received[0], received[1]
    assert opened == {"type": "open_inference_session", "model": "org/model", "max_length": 2 * 10 + 7 + 16}
    assert generate["inputs"] == "PROMPT" and generate["max_new_tokens"] == 1 and generate["do_sample"] == 0
    assert generate["stop_sequence"] == "<|eot_id|>" and generate["extra_stop_sequences"] == ["STOP"]
    assert "temperature" not in generate  # greedy: no sampling parameters at all
    assert len(chunks) == 7 and chunks[-1].finish_reason == "length"


def test_node_urls_are_checked() -> None:
    with pytest.raises(ValueError, match="unsupported node URL"):
        client_for_url("ftp://node", httpx.AsyncClient(), timeout=1)
    with pytest.raises(ValueError, match="unsupported node URL"):
        client_for_url("http://", httpx.AsyncClient(), timeout=1)

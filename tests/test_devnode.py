"""The node simulator, driven for real: uvicorn on loopback, httpx and websockets clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from openai_proxy.devnode import VOCAB, DevnodeConfig, create_devnode_app, generate_tokens, serve_devnode

MODEL = "bigscience/bloom-560m"
ADDRESS = "0x1111111111111111111111111111111111111111"


@dataclass
class Devnode:
    """A running devnode and a client for it."""

    base: str
    client: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/api/v2/generate"

    async def control(self, **changes: Any) -> dict[str, Any]:
        response = await self.client.post("/control", json=changes)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get("/control")).json()
        return body

    async def wait_for(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll /control until `check` holds (the server notices a disconnect asynchronously)."""
        for _ in range(500):
            stats = await self.stats()
            if check(stats):
                return stats
            await asyncio.sleep(0.01)
        raise AssertionError(f"condition never held; last stats: {stats}")

    async def wait_cancelled(self, count: int = 1) -> dict[str, Any]:
        return await self.wait_for(lambda s: s["cancelled"] == count and s["in_flight"] == 0)


@pytest.fixture
async def devnode() -> AsyncIterator[Devnode]:
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    config = DevnodeConfig(model=MODEL, address=ADDRESS)
    server = asyncio.create_task(serve_devnode(config, on_ready=ready.set_result))
    await asyncio.wait((ready, server), return_when=asyncio.FIRST_COMPLETED)
    base = f"http://127.0.0.1:{ready.result()}"
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        node = Devnode(base, client)
        await node.wait_for(lambda s: True)  # answers: ready
        yield node
    server.cancel()
    with suppress(asyncio.CancelledError):
        await server


def text_of(prompt: str, count: int) -> str:
    return "".join(generate_tokens(prompt, count))


# --- the deterministic text --------------------------------------------------------------------------


def test_vocabulary_is_prime_sized_distinct_lowercase_words() -> None:
    assert len(VOCAB) == 97
    assert len(set(VOCAB)) == len(VOCAB)
    assert all(word.isalpha() and word.islower() for word in VOCAB)


@given(prompt=st.text(max_size=60), count=st.integers(0, 40), data=st.data())
def test_any_prefix_of_an_answer_is_continued_exactly(prompt: str, count: int, data: st.DataObject) -> None:
    tokens = generate_tokens(prompt, count)
    assert len(tokens) == count
    k = data.draw(st.integers(0, count))
    assert generate_tokens(prompt + "".join(tokens[:k]), count - k) == tokens[k:]


def test_fresh_answers_space_the_first_token_by_the_prompt_ending() -> None:
    assert generate_tokens("Hello", 1)[0].startswith(" ")
    assert not generate_tokens("Hello\n", 1)[0].startswith(" ")
    assert not generate_tokens("", 1)[0].startswith(" ")
    assert generate_tokens("say lorem", 2) == [" ipsum", " dolor"]
    assert generate_tokens("say libero", 1) == [" lorem"]  # the vocabulary wraps around
    assert generate_tokens("same prompt", 5) == generate_tokens("same prompt", 5)
    assert all(token.startswith(" ") for token in generate_tokens("x", 6)[1:])


# --- health and control ------------------------------------------------------------------------------


async def test_health_reports_status_model_and_address(devnode: Devnode) -> None:
    response = await devnode.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": MODEL, "address": ADDRESS}
    await devnode.control(loading=True, model=None)
    assert (await devnode.client.get("/health")).json() == {"status": "loading", "address": ADDRESS}


async def test_control_round_trip(devnode: Devnode) -> None:
    answer = await devnode.control(fault="hang", token_delay=0.5, eos_after=3)
    assert answer["fault"] == "hang" and answer["token_delay"] == 0.5 and answer["eos_after"] == 3
    assert answer["model"] == MODEL and "requests" not in answer
    stats = await devnode.stats()
    assert {k: stats[k] for k in ("fault", "token_delay", "eos_after", "die_after")} == {
        "fault": "hang",
        "token_delay": 0.5,
        "eos_after": 3,
        "die_after": 0,
    }
    assert {k: stats[k] for k in ("requests", "in_flight", "completed", "cancelled", "failed")} == {
        "requests": 0,
        "in_flight": 0,
        "completed": 0,
        "cancelled": 0,
        "failed": 0,
    }
    for bad in ({"port": 1}, {"fault": "explode"}, {"token_delay": -1}):
        assert (await devnode.client.post("/control", json=bad)).status_code == 400
    assert (await devnode.stats())["fault"] == "hang"


def test_config_rejects_unknown_faults() -> None:
    with pytest.raises(ValueError, match="fault"):
        DevnodeConfig(fault="explode")


# --- Plumise node: POST /api/v1/generate with JSON --------------------------------------------------


async def test_plumise_generate(devnode: Devnode) -> None:
    body = {"inputs": "Tell me a story", "parameters": {"max_new_tokens": 7, "temperature": 0.2}}
    response = await devnode.client.post("/api/v1/generate", json=body)
    assert response.status_code == 200
    assert response.json() == {"generated_text": text_of("Tell me a story", 7), "num_tokens": 7}
    default = await devnode.client.post("/api/v1/generate", json={"inputs": "x", "parameters": None})
    assert default.json()["num_tokens"] == 128
    await devnode.control(eos_after=3)
    short = await devnode.client.post("/api/v1/generate", json=body)
    assert short.json() == {"generated_text": text_of("Tell me a story", 3), "num_tokens": 3}
    stats = await devnode.stats()
    assert (stats["requests"], stats["completed"], stats["in_flight"]) == (3, 3, 0)


async def test_plumise_errors(devnode: Devnode) -> None:
    bad = await devnode.client.post("/api/v1/generate", json={"parameters": {"max_new_tokens": 0}})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], list)
    await devnode.control(fault="fail")
    failed = await devnode.client.post("/api/v1/generate", json={"inputs": "hi"})
    assert (failed.status_code, failed.json()) == (500, {"detail": "Inference error: simulated failure"})
    await devnode.control(loading=True)
    loading = await devnode.client.post("/api/v1/generate", json={"inputs": "hi"})
    assert (loading.status_code, loading.json()) == (503, {"detail": "Model is still loading"})


async def test_plumise_hang_counts_the_abandoned_request_as_cancelled(devnode: Devnode) -> None:
    await devnode.control(fault="hang")
    with pytest.raises(httpx.ReadTimeout):
        await devnode.client.post("/api/v1/generate", json={"inputs": "hi"}, timeout=0.2)
    await devnode.wait_cancelled()


async def test_plumise_die_cuts_the_connection_without_a_response(devnode: Devnode) -> None:
    await devnode.control(fault="die", die_after=2)
    with pytest.raises(httpx.RemoteProtocolError):
        await devnode.client.post("/api/v1/generate", json={"inputs": "hi"})
    stats = await devnode.stats()
    assert (stats["failed"], stats["in_flight"]) == (1, 0)


async def test_slow_non_stream_answer_abandoned_midway_is_cancelled(devnode: Devnode) -> None:
    await devnode.control(token_delay=0.05)
    with pytest.raises(httpx.ReadTimeout):
        await devnode.client.post("/api/v1/generate", json={"inputs": "hi"}, timeout=0.2)
    await devnode.wait_cancelled()


# --- public Petals HTTP API: POST /api/v1/generate with form fields or a query string ----------------


async def test_petals_http_generate(devnode: Devnode) -> None:
    form = {"model": MODEL, "inputs": "A cat", "max_new_tokens": "5", "do_sample": "1", "temperature": "0.6"}
    response = await devnode.client.post("/api/v1/generate", data=form)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "outputs": text_of("A cat", 5)}
    query = await devnode.client.post("/api/v1/generate", params={"model": MODEL, "inputs": "A cat", "max_length": 6})
    assert query.json() == {"ok": True, "outputs": text_of("A cat", 4)}  # 6 minus the two prompt words


@pytest.mark.parametrize(
    ("changes", "form"),
    [
        ({}, {"model": "other/model", "inputs": "x", "max_new_tokens": "2"}),
        ({}, {"inputs": "x", "max_new_tokens": "2"}),
        ({}, {"model": MODEL, "inputs": "x", "max_new_tokens": "many"}),
        ({}, {"model": MODEL, "inputs": "x"}),
        ({"fault": "fail"}, {"model": MODEL, "inputs": "x", "max_new_tokens": "2"}),
        ({"loading": True}, {"model": MODEL, "inputs": "x", "max_new_tokens": "2"}),
    ],
)
async def test_petals_http_failures_are_http_200_with_ok_false(
    devnode: Devnode, changes: dict[str, Any], form: dict[str, str]
) -> None:
    if changes:
        await devnode.control(**changes)
    response = await devnode.client.post("/api/v1/generate", data=form)
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is False and set(body) == {"ok", "traceback"}
    assert "Traceback" in body["traceback"]


async def test_petals_http_hang_and_die(devnode: Devnode) -> None:
    form = {"model": MODEL, "inputs": "x", "max_new_tokens": "3"}
    await devnode.control(fault="hang")
    with pytest.raises(httpx.ReadTimeout):
        await devnode.client.post("/api/v1/generate", data=form, timeout=0.2)
    await devnode.wait_cancelled()
    await devnode.control(fault="die", die_after=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await devnode.client.post("/api/v1/generate", data=form)
    assert (await devnode.stats())["failed"] == 1


# --- public Petals WebSocket API: /api/v2/generate ---------------------------------------------------


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return message


async def open_session(ws: ClientConnection, max_length: int = 100, model: str = MODEL) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "open_inference_session", "model": model, "max_length": max_length}))
    return await recv_json(ws)


async def test_ws_generate_without_stop_sequence_continues_the_session(devnode: Devnode) -> None:
    async with connect(devnode.ws_url) as ws:
        assert await open_session(ws) == {"ok": True}
        await ws.send(json.dumps({"type": "generate", "inputs": "Once upon", "max_new_tokens": 4, "do_sample": 0}))
        first = await recv_json(ws)
        assert first == {"ok": True, "outputs": text_of("Once upon", 4), "stop": True, "token_count": 4}
        await ws.send(json.dumps({"type": "generate", "max_new_tokens": 3}))
        second = await recv_json(ws)
        assert first["outputs"] + second["outputs"] == text_of("Once upon", 7)
        await ws.send(json.dumps({"type": "generate", "inputs": "\nUser: hi\n", "max_new_tokens": 2}))
        third = await recv_json(ws)
        assert third["outputs"] == text_of("Once upon" + text_of("Once upon", 7) + "\nUser: hi\n", 2)
    stats = await devnode.wait_for(lambda s: s["in_flight"] == 0)
    assert (stats["requests"], stats["completed"], stats["cancelled"]) == (3, 3, 0)


async def test_ws_stop_sequence_streams_steps_until_eos(devnode: Devnode) -> None:
    await devnode.control(eos_after=5)
    async with connect(devnode.ws_url) as ws:
        assert await open_session(ws) == {"ok": True}
        step = {"type": "generate", "inputs": "Q: why?", "max_new_tokens": 2, "stop_sequence": "###"}
        await ws.send(json.dumps(step | {"extra_stop_sequences": ["</s>"]}))
        replies = [await recv_json(ws) for _ in range(4)]
    expected = generate_tokens("Q: why?", 5)
    assert replies == [
        {"ok": True, "outputs": "".join(expected[0:2]), "stop": False, "token_count": 2},
        {"ok": True, "outputs": "".join(expected[2:4]), "stop": False, "token_count": 2},
        {"ok": True, "outputs": expected[4], "stop": False, "token_count": 1},
        {"ok": True, "outputs": "###", "stop": True, "token_count": 1},
    ]


async def test_ws_session_max_length_is_enforced(devnode: Devnode) -> None:
    async with connect(devnode.ws_url) as ws:
        assert await open_session(ws, max_length=5) == {"ok": True}
        step = {"type": "generate", "inputs": "one two", "max_new_tokens": 1, "stop_sequence": "###"}
        await ws.send(json.dumps(step))
        steps = [await recv_json(ws) for _ in range(3)]
        assert [s["token_count"] for s in steps] == [1, 1, 1]
        error = await recv_json(ws)
        assert error["ok"] is False and "max_length exceeded" in error["traceback"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()


@pytest.mark.parametrize(
    ("changes", "model"), [({}, "other/model"), ({"loading": True}, MODEL)], ids=["wrong-model", "loading"]
)
async def test_ws_open_refused(devnode: Devnode, changes: dict[str, Any], model: str) -> None:
    if changes:
        await devnode.control(**changes)
    async with connect(devnode.ws_url) as ws:
        refusal = await open_session(ws, model=model)
        assert refusal["ok"] is False and "Traceback" in refusal["traceback"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_ws_first_message_must_open_a_session(devnode: Devnode) -> None:
    async with connect(devnode.ws_url) as ws:
        await ws.send(json.dumps({"type": "generate", "inputs": "x", "max_new_tokens": 1}))
        assert (await recv_json(ws))["ok"] is False
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_ws_fail(devnode: Devnode) -> None:
    await devnode.control(fault="fail")
    async with connect(devnode.ws_url) as ws:
        assert await open_session(ws) == {"ok": True}
        await ws.send(json.dumps({"type": "generate", "inputs": "x", "max_new_tokens": 1}))
        assert (await recv_json(ws))["ok"] is False
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert (await devnode.stats())["failed"] == 1


async def test_ws_hang_then_client_close_is_cancelled(devnode: Devnode) -> None:
    await devnode.control(fault="hang")
    async with connect(devnode.ws_url) as ws:
        assert await open_session(ws) == {"ok": True}
        await ws.send(json.dumps({"type": "generate", "inputs": "x", "max_new_tokens": 1}))
        await devnode.wait_for(lambda s: s["in_flight"] == 1)
    await devnode.wait_cancelled()


async def test_ws_client_closing_mid_stream_stops_the_generation(devnode: Devnode) -> None:
    await devnode.control(token_delay=0.02)
    async with connect(devnode.ws_url) as ws:
        assert await open_session(ws, max_length=10_000) == {"ok": True}
        step = {"type": "generate", "inputs": "x", "max_new_tokens": 1, "stop_sequence": "###"}
        await ws.send(json.dumps(step))
        got = [await recv_json(ws) for _ in range(3)]
        assert "".join(s["outputs"] for s in got) == text_of("x", 3)
    stats = await devnode.wait_cancelled()
    assert stats["completed"] == 0


async def test_ws_die_cuts_the_socket_without_a_close_frame(devnode: Devnode) -> None:
    await devnode.control(fault="die", die_after=2)
    async with connect(devnode.ws_url) as ws:
        assert await open_session(ws) == {"ok": True}
        step = {"type": "generate", "inputs": "x", "max_new_tokens": 1, "stop_sequence": "###"}
        await ws.send(json.dumps(step))
        got = [await recv_json(ws) for _ in range(2)]
        assert [s["outputs"] for s in got] == generate_tokens("x", 2)
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
        assert closed.value.rcvd is None
    stats = await devnode.wait_for(lambda s: s["in_flight"] == 0)
    assert (stats["failed"], stats["cancelled"]) == (1, 0)


# --- OpenAI-type node: /v1/completions and /v1/chat/completions --------------------------------------


async def test_openai_completion(devnode: Devnode) -> None:
    response = await devnode.client.post("/v1/completions", json={"model": MODEL, "prompt": "Say", "max_tokens": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    assert {k: body[k] for k in ("object", "model", "choices", "usage")} == {
        "object": "text_completion",
        "model": MODEL,
        "choices": [{"index": 0, "text": text_of("Say", 4), "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
    }
    default = await devnode.client.post("/v1/completions", json={"prompt": "Say"})
    assert default.json()["usage"]["completion_tokens"] == 16


async def test_openai_chat_completion_with_eos(devnode: Devnode) -> None:
    await devnode.control(eos_after=2)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    response = await devnode.client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 10, "temperature": 0}
    )
    body = response.json()
    prompt = "Be brief.\nHi there\n"
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text_of(prompt, 2)},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def sse_payloads(lines: list[str]) -> list[Any]:
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


async def test_openai_chat_stream_with_usage(devnode: Devnode) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Go"}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with devnode.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines()]
    events = sse_payloads(lines)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:4]]
    assert deltas == generate_tokens("Go\n", 3)
    assert chunks[4]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    assert all(c["usage"] is None for c in chunks[:5])
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    stats = await devnode.wait_for(lambda s: s["in_flight"] == 0)
    assert stats["completed"] == 1


async def test_openai_completion_stream(devnode: Devnode) -> None:
    body = {"prompt": "Go on", "max_tokens": 2, "stream": True}
    async with devnode.client.stream("POST", "/v1/completions", json=body) as response:
        events = sse_payloads([line async for line in response.aiter_lines()])
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["text"] for e in events[:-1]] == [*generate_tokens("Go on", 2), ""]
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, None, "length"]
    assert all("usage" not in e for e in events[:-1])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_openai_wrong_model_is_404_with_the_error_envelope(devnode: Devnode, path: str) -> None:
    body = {"model": "gpt-4", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    response = await devnode.client.post(path, json=body)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_openai_fail_and_bad_request(devnode: Devnode) -> None:
    bad = await devnode.client.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    await devnode.control(fault="fail")
    failed = await devnode.client.post("/v1/completions", json={"prompt": "x", "stream": True})
    assert failed.status_code == 500
    assert set(failed.json()["error"]) == {"message", "type", "param", "code"}


async def test_openai_stream_hang_is_cancelled_when_the_client_gives_up(devnode: Devnode) -> None:
    await devnode.control(fault="hang")
    body = {"prompt": "x", "stream": True}
    with pytest.raises(httpx.ReadTimeout):
        async with devnode.client.stream("POST", "/v1/completions", json=body, timeout=0.2):
            pass
    await devnode.wait_cancelled()


async def test_openai_stream_die_sends_some_tokens_then_cuts(devnode: Devnode) -> None:
    await devnode.control(fault="die", die_after=2)
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 10}
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with devnode.client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                lines.append(line)
    events = sse_payloads(lines)
    assert "[DONE]" not in events
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["", *generate_tokens("x\n", 2)]
    stats = await devnode.wait_for(lambda s: s["in_flight"] == 0)
    assert (stats["failed"], stats["cancelled"]) == (1, 0)


async def test_client_leaving_mid_sse_cancels_the_generation(devnode: Devnode) -> None:
    await devnode.control(token_delay=0.02)
    body = {"prompt": "x", "stream": True, "max_tokens": 10_000}
    async with devnode.client.stream("POST", "/v1/completions", json=body) as response:
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    stats = await devnode.wait_cancelled()
    assert stats["completed"] == 0


# --- the app without a server -------------------------------------------------------------------------


async def test_the_app_shares_its_config_object() -> None:
    config = DevnodeConfig(model=MODEL)
    app = create_devnode_app(config)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://devnode") as client:
        assert (await client.post("/control", json={"fault": "fail"})).json()["fault"] == "fail"
        assert config.fault == "fail"
        config.model = "other/model"
        assert (await client.get("/health")).json()["model"] == "other/model"

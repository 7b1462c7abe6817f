"""The original /api/v1 inference and models routes over real devnodes: shapes, fixed bugs, limits, SSE."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openai_proxy.api.legacy import sse_event
from openai_proxy.devnode import generate_tokens
from openai_proxy.templates import ChatMessage, get_template
from openai_proxy.tokens import TokenCounter

from .conftest import FREE_WALLET, PRO_WALLET, serve_app

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
PROMPT = "What is the capital of France?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is AI?"}]


def answer(prompt: str, tokens: int) -> str:
    return "".join(generate_tokens(prompt, tokens))


def llama_prompt(messages: list[dict[str, str]]) -> str:
    return get_template("llama3").render([ChatMessage(m["role"], m["content"]) for m in messages])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sse_events(body: str) -> list[dict[str, str]]:
    """Each SSE event as {"id", "event", "data"} (data lines joined with \\n, as EventSource does)."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name in ("id", "event"):
                fields[name] = value
        if data:
            events.append({"event": "message", **fields, "data": "\n".join(data)})
    return events


@pytest.fixture
async def gateway(start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"petals+ws://{node.hostport}"])


async def post(http: httpx.AsyncClient, gw: Any, path: str, body: dict[str, Any], wallet: str = FREE_WALLET
               ) -> httpx.Response:
    return await http.post(f"{gw.url}/api/v1/{path}", json=body, headers=gw.headers(wallet))


async def test_prompt_answers_the_original_shape_with_text(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await post(http, gateway, "inference", {"model": LLAMA, "prompt": PROMPT, "max_tokens": 5})
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    body = response.json()
    assert body["id"].startswith("req_") and len(body["id"].split("_")[2]) == 16
    prompt_tokens = TokenCounter().count(PROMPT)
    assert body == {
        "id": body["id"],
        "model": LLAMA,
        "choices": [{"text": answer(PROMPT, 5), "finish_reason": "length"}],  # the original always said "stop"
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5},
    }


async def test_messages_answer_with_message_on_both_routes(gateway, http) -> None:  # type: ignore[no-untyped-def]
    for path in ("inference", "inference/chat"):
        response = await post(http, gateway, path, {"model": LLAMA, "messages": MESSAGES, "max_tokens": 4})
        assert response.status_code == 200
        (choice,) = response.json()["choices"]
        assert choice == {"message": {"role": "assistant", "content": answer(llama_prompt(MESSAGES), 4)},
                          "finish_reason": "length"}


async def test_both_prompt_and_messages_generate_from_messages_and_return_both(gateway, http) -> None:  # type: ignore[no-untyped-def]
    body = {"model": LLAMA, "prompt": PROMPT, "messages": MESSAGES, "max_tokens": 3}
    (choice,) = (await post(http, gateway, "inference", body)).json()["choices"]
    expected = answer(llama_prompt(MESSAGES), 3)
    assert choice["text"] == expected and choice["message"]["content"] == expected


async def test_finish_reason_is_stop_when_the_model_ends_first(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(eos_after=2)
    gw = await start_gateway([f"petals+ws://{node.hostport}"])
    body = (await post(http, gw, "inference", {"model": LLAMA, "prompt": PROMPT, "max_tokens": 8})).json()
    assert body["choices"] == [{"text": answer(PROMPT, 2), "finish_reason": "stop"}]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nobody/nothing", "prompt": "x", "max_tokens": 4}, 404, "model"),  # the original: 400 or 500
        ({"model": LLAMA, "max_tokens": 4}, 400, "prompt"),
        ({"model": LLAMA, "prompt": "x", "max_tokens": 4, "stop": ["\n"]}, 400, "stop"),  # unknown fields: 400
        ({"model": LLAMA, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": LLAMA, "prompt": "x", "max_tokens": 4096}, 400, "max_tokens"),  # above the free tier's 2048
        ({"model": LLAMA, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        ({"model": LLAMA, "messages": []}, 400, "messages"),
        ({"model": LLAMA, "prompt": "x" * 32001}, 400, "prompt"),
        ({"model": PRO_MODEL, "prompt": "x", "max_tokens": 4}, 403, "model"),
    ],
)
async def test_invalid_requests_get_the_error_envelope(gateway, http, body, status, param) -> None:  # type: ignore[no-untyped-def]
    response = await post(http, gateway, "inference", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


async def test_auth_is_required_and_pro_models_open_to_pro(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await http.post(f"{gateway.url}/api/v1/inference", json={"model": LLAMA, "prompt": "x"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    body = {"model": PRO_MODEL, "prompt": "x", "max_tokens": 3000}
    response = await post(http, gateway, "inference", body, wallet=PRO_WALLET)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"] == "unlimited"


async def test_limits_are_shared_with_v1(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([f"petals+ws://{node.hostport}"], free_tier_limit=2)
    v1 = await http.post(f"{gw.v1}/completions", json={"model": LLAMA, "prompt": "x", "max_tokens": 1},
                         headers=gw.headers())
    assert v1.status_code == 200
    assert (await post(http, gw, "inference", {"model": LLAMA, "prompt": "x", "max_tokens": 1})).status_code == 200
    refused = await post(http, gw, "inference/chat", {"model": LLAMA, "prompt": "x", "max_tokens": 1})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.fixture
async def recording_node() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A Plumise-protocol node that records the bodies it receives (what the devnode does not expose)."""
    bodies: list[dict[str, Any]] = []

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def generate(request: Request) -> JSONResponse:
        bodies.append(await request.json())
        return JSONResponse({"generated_text": " Paris", "num_tokens": 1})

    app = Starlette(routes=[Route("/health", health), Route("/api/v1/generate", generate, methods=["POST"])])
    async with serve_app(app, lifespan="off") as url:
        yield url, bodies


async def test_explicit_zero_temperature_and_the_original_defaults_reach_the_node(  # type: ignore[no-untyped-def]
    recording_node, start_gateway, http
) -> None:
    url, bodies = recording_node
    gw = await start_gateway([url])
    await post(http, gw, "inference", {"model": LLAMA, "prompt": PROMPT, "temperature": 0, "top_p": 0})
    await post(http, gw, "inference", {"model": LLAMA, "prompt": PROMPT, "max_tokens": 7})
    explicit, defaults = (body["parameters"] for body in bodies)
    assert (explicit["temperature"], explicit["top_p"]) == (0, 0)  # the original's `|| 0.7` made these 0.7
    assert (defaults["temperature"], defaults["top_p"], defaults["max_new_tokens"]) == (0.7, 0.9, 7)


# --- SSE -------------------------------------------------------------------------------------------------------


def test_sse_event_splits_line_breaks_into_data_lines() -> None:
    assert sse_event("a\nb\r\nc\rd\n", ident=3) == b"id: 3\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
    assert sse_event("{}", ident=9, event="complete") == b"id: 9\nevent: complete\ndata: {}\n\n"
    # What an SSE parser rebuilds: the chunk itself, line ends normalised to \n.
    assert sse_events(sse_event(" two\nlines\n", ident=1).decode())[0]["data"] == " two\nlines\n"


async def test_stream_sends_raw_chunks_then_complete_with_usage(gateway, http) -> None:  # type: ignore[no-untyped-def]
    body = {"model": LLAMA, "prompt": PROMPT, "max_tokens": 5}
    response = await post(http, gateway, "inference/stream", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    events = sse_events(response.text)
    chunks, complete = events[:-1], events[-1]
    assert [e["event"] for e in chunks] == ["message"] * 5
    assert [e["id"] for e in events] == [str(i) for i in range(1, 7)]
    assert "".join(e["data"] for e in chunks) == answer(PROMPT, 5)
    assert complete["event"] == "complete"
    done = json.loads(complete["data"])
    prompt_tokens = TokenCounter().count(PROMPT)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}
    assert done == {"status": "done", "id": done["id"], "model": LLAMA, "finish_reason": "length", "usage": usage}


async def test_stream_by_get_with_query_parameters(gateway, http) -> None:  # type: ignore[no-untyped-def]
    params = {"model": LLAMA, "messages": json.dumps(MESSAGES), "max_tokens": "3", "temperature": "0"}
    response = await http.get(f"{gateway.url}/api/v1/inference/stream", params=params, headers=gateway.headers())
    events = sse_events(response.text)
    assert "".join(e["data"] for e in events[:-1]) == answer(llama_prompt(MESSAGES), 3)
    assert events[-1]["event"] == "complete"
    bad = await http.get(f"{gateway.url}/api/v1/inference/stream", params={"model": LLAMA, "messages": "[{"},
                         headers=gateway.headers())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


async def test_stream_errors_before_the_start_are_plain_json(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await post(http, gateway, "inference/stream", {"model": "nobody/nothing", "prompt": "x"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


async def test_failure_mid_stream_is_an_error_event_and_refunds_the_slot(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    dying = await start_devnode(fault="die", die_after=2)
    gw = await start_gateway([f"petals+ws://{dying.hostport}"], node_max_failures=100)
    response = await post(http, gw, "inference/stream", {"model": LLAMA, "prompt": PROMPT, "max_tokens": 6})
    events = sse_events(response.text)
    assert "".join(e["data"] for e in events[:-1]) == answer(PROMPT, 2)
    assert events[-1]["event"] == "error"
    error = json.loads(events[-1]["data"])["error"]
    assert error["code"] == "bad_node_response" and "Traceback" not in error["message"]
    me = (await http.get(f"{gw.url}/api/v1/auth/me", headers=gw.headers())).json()
    assert me["limits"]["remaining"] == 10  # our failure: the request was given back


# --- models ----------------------------------------------------------------------------------------------------


async def test_models_list_is_public_with_nodes_and_status(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    llama_node = await start_devnode(model=LLAMA)
    gw = await start_gateway([f"http://{llama_node.hostport}"])
    response = await http.get(f"{gw.url}/api/v1/models")
    assert response.status_code == 200
    models = {m["id"]: m for m in response.json()["models"]}
    assert len(models) == 6 and PRO_MODEL in models
    assert models[LLAMA] == {
        "id": LLAMA, "name": "Llama 3.1 8B Instruct", "description": models[LLAMA]["description"],
        "max_tokens": 4096, "context_length": 131072, "tier": "free", "nodes": 1, "status": "available",
    }
    assert models[LLAMA]["description"].startswith("Llama 3.1 8B Instruct: ")
    assert {m["status"] for i, m in models.items() if i != LLAMA} == {"offline"}
    assert {m["nodes"] for i, m in models.items() if i != LLAMA} == {0}


async def test_a_model_with_some_nodes_down_is_degraded(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([f"http://{node.hostport}", f"http://127.0.0.1:{closed_port()}"],
                             node_connect_timeout=1)
    models = (await http.get(f"{gw.url}/api/v1/models")).json()["models"]
    assert {(m["status"], m["nodes"]) for m in models} == {("degraded", 1)}


async def test_agent_reports_count_as_nodes(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(model=LLAMA, address="0x00000000000000000000000000000000000000aa")
    gw = await start_gateway([f"http://{node.hostport}"], oracle_api_key="inbox-key")
    qwen = "qwen/qwen3-32b"
    for agent, address in (("a1", "0xBB"), ("a2", "0x00000000000000000000000000000000000000AA")):
        report = {"agentId": agent, "address": address, "models": [qwen, LLAMA],
                  "performance": {"requests": 1, "avgLatency": 10, "errors": 0}, "timestamp": 1_700_000_000_000}
        sent = await http.post(f"{gw.url}/api/v1/report", json=report, headers={"x-api-key": "inbox-key"})
        assert sent.status_code == 201
    models = {m["id"]: m for m in (await http.get(f"{gw.url}/api/v1/models")).json()["models"]}
    assert (models[qwen]["status"], models[qwen]["nodes"]) == ("available", 2)  # reported only
    assert (models[LLAMA]["status"], models[LLAMA]["nodes"]) == ("available", 2)  # a2 is the pool node itself
    assert models["bigscience/bloom-560m"]["status"] == "offline"


async def test_model_details_need_a_token_and_take_ids_with_slashes(gateway, http) -> None:  # type: ignore[no-untyped-def]
    url = f"{gateway.url}/api/v1/models"
    assert (await http.get(f"{url}/{LLAMA}")).status_code == 401
    for path in (LLAMA, LLAMA.replace("/", "%2F")):
        response = await http.get(f"{url}/{path}", headers=gateway.headers())
        assert response.status_code == 200 and response.json()["id"] == LLAMA
        assert response.json()["status"] == "available"
    missing = await http.get(f"{url}/nobody/nothing", headers=gateway.headers())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

"""The /v1 surface over real devnodes: shapes, streaming, parameters, and every error status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import pytest

from openai_proxy.devnode import generate_tokens
from openai_proxy.templates import ChatMessage, get_template
from openai_proxy.tokens import TokenCounter

from .conftest import FREE_WALLET, PRO_WALLET, sse_payloads

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "qwen/qwen3-32b"
PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
HELLO = [{"role": "user", "content": "Hello there"}]


def llama_prompt(messages: list[dict[str, str]]) -> str:
    return get_template("llama3").render([ChatMessage(m["role"], m["content"]) for m in messages])


def expected_answer(prompt: str, tokens: int) -> str:
    return "".join(generate_tokens(prompt, tokens))


@pytest.fixture
async def gateway(start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"petals+ws://{node.hostport}"])


async def chat(http: httpx.AsyncClient, gw: Any, body: dict[str, Any], wallet: str = FREE_WALLET) -> httpx.Response:
    return await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers(wallet))


async def test_chat_completion_has_the_exact_openai_shape(gateway, http) -> None:  # type: ignore[no-untyped-def]
    before = int(time.time())
    response = await chat(http, gateway, {"model": LLAMA, "messages": HELLO, "max_tokens": 6})
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert before <= body["created"] <= int(time.time())
    assert body["model"] == LLAMA
    assert body["system_fingerprint"]
    prompt = llama_prompt(HELLO)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": expected_answer(prompt, 6), "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    prompt_tokens = TokenCounter().count(prompt)
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 6, "total_tokens": prompt_tokens + 6}


async def test_stream_is_role_then_deltas_then_finish_then_usage_then_done(gateway, http) -> None:  # type: ignore[no-untyped-def]
    request = {"model": LLAMA, "messages": HELLO, "max_tokens": 5, "stream": True,
               "stream_options": {"include_usage": True}}
    response = await chat(http, gateway, request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = chunks[-2]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == expected_answer(llama_prompt(HELLO), 5)
    for line in response.text.splitlines():  # only data lines, comments and blank separators
        assert line == "" or line.startswith("data: ") or line.startswith(":")


async def test_stream_without_include_usage_sends_no_usage_chunk(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await chat(http, gateway, {"model": LLAMA, "messages": HELLO, "max_tokens": 3, "stream": True})
    chunks = [json.loads(p) for p in sse_payloads(response.text)[:-1]]
    assert all(c["choices"] for c in chunks)


async def test_nulls_parts_unknown_fields_and_max_completion_tokens(gateway, http) -> None:  # type: ignore[no-untyped-def]
    body = {
        "model": LLAMA,
        "messages": [{"role": "system", "content": None}, {"role": "user", "content": [
            {"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}],
        "max_tokens": None, "max_completion_tokens": 4, "n": None, "stop": None, "stream": None,
        "stream_options": None, "temperature": None, "top_p": None, "seed": None, "user": None,
        "logit_bias": {}, "logprobs": None, "tools": None, "response_format": {"type": "text"},
        "metadata": {"anything": True}, "store": False, "some_future_field": [1, 2],
    }
    response = await chat(http, gateway, body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"42": 3}}, "logit_bias"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0]"),
        ({"n": 1000}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ],
)
async def test_parameters_that_cannot_be_honoured_get_400_naming_them(  # type: ignore[no-untyped-def]
    gateway, http, extra, param
) -> None:
    response = await chat(http, gateway, {"model": LLAMA, "messages": HELLO, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]


async def test_stop_strings_never_reach_the_client(gateway, http) -> None:  # type: ignore[no-untyped-def]
    full = expected_answer(llama_prompt(HELLO), 8)
    stop = full.split()[3]  # the fourth word: the answer must end right before it
    request = {"model": LLAMA, "messages": HELLO, "max_tokens": 8, "stop": [stop]}
    body = (await chat(http, gateway, request)).json()
    answer = body["choices"][0]["message"]["content"]
    assert answer == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"
    streamed = await chat(http, gateway, {**request, "stream": True})
    chunks = [json.loads(p) for p in sse_payloads(streamed.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == answer
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_plain_string_stop_works_like_a_list_of_one(gateway, http) -> None:  # type: ignore[no-untyped-def]
    full = expected_answer(llama_prompt(HELLO), 8)
    stop = full.split()[2]
    body = (await chat(http, gateway, {"model": LLAMA, "messages": HELLO, "max_tokens": 8, "stop": stop})).json()
    assert body["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_chat_n_gives_every_choice_in_order_streamed_or_not(gateway, http) -> None:  # type: ignore[no-untyped-def]
    answer = expected_answer(llama_prompt(HELLO), 4)
    body = (await chat(http, gateway, {"model": LLAMA, "messages": HELLO, "max_tokens": 4, "n": 3})).json()
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (i, answer, "length") for i in range(3)]
    assert body["usage"]["completion_tokens"] == 12
    request = {"model": LLAMA, "messages": HELLO, "max_tokens": 4, "n": 2, "stream": True,
               "stream_options": {"include_usage": True}}
    payloads = sse_payloads((await chat(http, gateway, request)).text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == answer
        assert mine[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize(("extra", "param"), [
    ({"suffix": "and so on"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"logprobs": 2}, "logprobs"),
    ({"prompt": [[1, 2, 3]]}, "prompt"),
])
async def test_completion_parameters_that_cannot_be_honoured_get_400(gateway, http, extra, param) -> None:  # type: ignore[no-untyped-def]
    body = {"model": QWEN, "prompt": "Once", "max_tokens": 3, **extra}
    response = await http.post(f"{gateway.v1}/completions", json=body, headers=gateway.headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_completions_list_of_prompts_times_n_is_prompt_major(gateway, http) -> None:  # type: ignore[no-untyped-def]
    body = {"model": QWEN, "prompt": ["first prompt", "second prompt"], "n": 2, "max_tokens": 3}
    response = await http.post(f"{gateway.v1}/completions", json=body, headers=gateway.headers())
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    texts = [c["text"] for c in data["choices"]]
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert texts == [expected_answer("first prompt", 3)] * 2 + [expected_answer("second prompt", 3)] * 2
    assert data["usage"]["completion_tokens"] == 12


async def test_completions_stream_and_echo(gateway, http) -> None:  # type: ignore[no-untyped-def]
    body = {"model": QWEN, "prompt": "Say", "max_tokens": 4, "stream": True, "echo": True}
    response = await http.post(f"{gateway.v1}/completions", json=body, headers=gateway.headers())
    chunks = [json.loads(p) for p in sse_payloads(response.text)[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Say" + expected_answer("Say", 4)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_models_list_and_retrieve_with_raw_and_encoded_slash(gateway, http) -> None:  # type: ignore[no-untyped-def]
    listing = (await http.get(f"{gateway.v1}/models", headers=gateway.headers())).json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert LLAMA in ids and PRO_MODEL in ids
    assert all(m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"] for m in listing["data"])
    for path in (LLAMA, LLAMA.replace("/", "%2F")):
        response = await http.get(f"{gateway.v1}/models/{path}", headers=gateway.headers())
        assert response.status_code == 200 and response.json()["id"] == LLAMA
    missing = await http.get(f"{gateway.v1}/models/nobody/nothing", headers=gateway.headers())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "invalid_api_key"),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid_api_key"),
        ({"Authorization": "Basic abc"}, "invalid_api_key"),
    ],
)
async def test_missing_or_invalid_keys_get_401(gateway, http, headers, code) -> None:  # type: ignore[no-untyped-def]
    response = await http.post(f"{gateway.v1}/chat/completions", json={"model": LLAMA, "messages": HELLO},
                               headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert response.headers["x-request-id"]


async def test_expired_token_says_token_expired(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([f"http://{node.hostport}"], jwt_expiration="1")
    token = gw.token()
    payload = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["exp"] - payload["iat"] == 1
    # An expired token: mint one whose lifetime ended, by verifying with a service whose clock is later.
    from openai_proxy.auth.jwt import TokenService

    service = TokenService(gw.settings.jwt_secret.get_secret_value(), lifetime=1, issuer="openai-proxy",
                           audience="openai-proxy", clock=lambda: time.time() - 10)
    expired = service.mint(FREE_WALLET).token
    response = await http.get(f"{gw.v1}/models", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "token_expired"


async def test_free_wallet_asking_for_a_pro_model_gets_403(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await chat(http, gateway, {"model": PRO_MODEL, "messages": HELLO, "max_tokens": 2})
    assert response.status_code == 403
    assert "pro" in response.json()["error"]["message"]
    allowed = await chat(http, gateway, {"model": PRO_MODEL, "messages": HELLO, "max_tokens": 2}, PRO_WALLET)
    assert allowed.status_code == 200


async def test_body_over_the_limit_gets_413(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([f"http://{node.hostport}"], max_body_bytes=1000)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())
    assert response.status_code == 413 and "error" in response.json()


async def test_invalid_json_gets_400(gateway, http) -> None:  # type: ignore[no-untyped-def]
    for raw in (b"{not json", b"\xff\xfe", b"[1, 2]", b"[" * 100_000):
        response = await http.post(f"{gateway.v1}/chat/completions", content=raw, headers=gateway.headers())
        assert response.status_code == 400, raw[:10]
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_no_node_for_the_model_gets_503_with_retry_after(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(model=QWEN)
    gw = await start_gateway([f"http://{node.hostport}"])
    response = await chat(http, gw, {"model": LLAMA, "messages": HELLO})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "no_healthy_node"
    assert (await chat(http, gw, {"model": QWEN, "messages": HELLO, "max_tokens": 2})).status_code == 200


async def test_failing_nodes_give_502_and_hanging_nodes_504(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    failing = await start_devnode(fault="fail")
    gw = await start_gateway([f"http://{failing.hostport}", f"openai+http://{failing.hostport}"])
    response = await chat(http, gw, {"model": LLAMA, "messages": HELLO, "max_tokens": 2})
    assert response.status_code == 502 and "Traceback" not in response.text
    hanging = await start_devnode(fault="hang")
    gw2 = await start_gateway([f"petals+ws://{hanging.hostport}"], first_token_timeout=0.3)
    response = await chat(http, gw2, {"model": LLAMA, "messages": HELLO, "max_tokens": 2})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "node_timeout"


async def test_failure_after_the_first_byte_is_an_in_band_error_without_done(  # type: ignore[no-untyped-def]
    start_devnode, start_gateway, http
) -> None:
    dying = await start_devnode(fault="die", die_after=2)
    gw = await start_gateway([f"petals+ws://{dying.hostport}"])
    response = await chat(http, gw, {"model": LLAMA, "messages": HELLO, "max_tokens": 6, "stream": True})
    payloads = sse_payloads(response.text)
    assert payloads[-1] != "[DONE]"
    error = json.loads(payloads[-1])["error"]
    assert error["message"] and error["type"]


async def test_unknown_route_and_method_use_the_envelope(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await http.get(f"{gateway.url}/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"
    response = await http.get(f"{gateway.v1}/chat/completions")
    assert response.status_code == 405 and "error" in response.json()


def test_nesting_guard_sees_through_strings_and_escapes() -> None:
    from openai_proxy.jsonsafe import nesting_depth_exceeds

    assert not nesting_depth_exceeds(b'{"a": "' + b"[" * 500 + b'"}')
    assert not nesting_depth_exceeds(b'{"a": "\\"' + b"[" * 500 + b'"}')
    assert nesting_depth_exceeds(b'{"a": "\\\\"' + b"[" * 500 + b"]" * 500 + b"}")
    assert nesting_depth_exceeds(b'{"x":' * 101 + b"1" + b"}" * 101)
    assert not nesting_depth_exceeds(b'{"x":' * 100 + b"1" + b"}" * 100)


def test_json_decoding_accepts_what_the_json_module_accepts_and_never_recurses_unbounded() -> None:
    # jiter decodes first; what it refuses but the json module reads (lone surrogates, UTF-16, a BOM) is
    # still read, and nothing nested past jiter's limit, or past MAX_DEPTH on the json module's path, is.
    import json

    from openai_proxy import jsonsafe

    for raw in (b'{"a":"\\ud83d"}', b'{"a":"\xed\xa0\x80"}', '{"a":1}'.encode("utf-16"), b'\xef\xbb\xbf[1]',
                b'{"x":' * 150 + b"1" + b"}" * 150, b'[1.5e400, NaN, -0, 123456789012345678901234567890]'):
        assert repr(jsonsafe.loads(raw)) == repr(json.loads(raw))  # repr: NaN is not equal to itself
    for raw in (b"[" * 100_000 + b"]" * 100_000, b"[" * 250 + b"]" * 250, b"[" * 101 + b'"\\ud83d"' + b"]" * 101,
                b"[1,]", b"{'a': 1}", b'"\xff"'):
        with pytest.raises(ValueError):
            jsonsafe.loads(raw)
    assert json.loads(jsonsafe.dumps({"a": "\ud800 \u00e9", "b": [1, 2.5, None]})) == {"a": "\ud800 \u00e9",
                                                                                    "b": [1, 2.5, None]}


async def test_keepalive_comments_flow_while_waiting_for_the_first_token(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    slow = await start_devnode(first_token_delay=0.5)
    gw = await start_gateway([f"petals+ws://{slow.hostport}"], sse_keepalive_seconds=0.05)
    response = await chat(http, gw, {"model": LLAMA, "messages": HELLO, "max_tokens": 2, "stream": True})
    head = response.text.split("data: ", 2)
    assert ": keep-alive" in head[0] + head[1]  # before the first content delta
    assert sse_payloads(response.text)[-1] == "[DONE]"


async def test_client_disconnect_cancels_the_node_request(start_devnode, start_gateway) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(token_delay=0.05)
    gw = await start_gateway([f"petals+ws://{node.hostport}"])
    body = {"model": LLAMA, "messages": HELLO, "max_tokens": 500, "stream": True}
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", f"{gw.v1}/chat/completions", json=body, headers=gw.headers()) as response,
    ):
        async for line in response.aiter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first real token arrived: hang up

    async def cancelled() -> bool:
        counters = await node.counters()
        return counters["cancelled"] == 1 and counters["in_flight"] == 0

    from .conftest import eventually

    await eventually(cancelled, within=5)


@pytest.mark.parametrize(("path", "n"), [("/v1/chat/completions", 1), ("/v1/completions", 1),
                                         ("/v1/completions", 2), ("/api/v1/inference", 1)])
async def test_client_disconnect_cancels_a_non_streaming_request(  # type: ignore[no-untyped-def]
    start_devnode, start_gateway, http, path, n
) -> None:
    from .conftest import eventually

    node = await start_devnode(token_delay=0.05)  # 500 tokens: 25 s if nobody cancels
    gw = await start_gateway([f"http://{node.hostport}"])
    body: dict[str, object] = {"model": LLAMA, "max_tokens": 500}
    body.update({"prompt": "Hi"} if path == "/v1/completions" else {"messages": HELLO})
    if n > 1:
        body["n"] = n  # every choice's node request is cancelled, each in its own task
    request = asyncio.ensure_future(http.post(f"{gw.url}{path}", json=body, headers=gw.headers()))

    async def generating() -> bool:
        return (await node.counters())["in_flight"] == n

    await eventually(generating)
    request.cancel()  # httpx closes the connection: the client hangs up mid-generation
    with contextlib.suppress(asyncio.CancelledError):
        await request

    async def cancelled() -> bool:
        counters = await node.counters()
        return counters["cancelled"] == n and counters["in_flight"] == 0

    await eventually(cancelled, within=5)
    # The gateway goes on serving, and the wallet's usage shows the tokens the node produced before the hang-up.
    response = await http.post(f"{gw.v1}/completions", json={"model": LLAMA, "prompt": "Hi", "max_tokens": 2},
                               headers=gw.headers())
    assert response.status_code == 200
    me = (await http.get(f"{gw.url}/api/v1/auth/me", headers=gw.headers())).json()
    assert me["usage_today"]["requests"] == 2


async def test_liveness_keeps_the_original_body_and_readiness_reports_nodes_and_store(gateway, http) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime

    for path in ("/", "/health", "/api/v1/health"):
        body = (await http.get(f"{gateway.url}{path}")).json()
        assert set(body) == {"status", "timestamp", "service", "version"}
        assert (body["status"], body["service"], body["version"]) == ("ok", "Plumise Inference API", "1.0.0")
        assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    ready = await http.get(f"{gateway.url}/ready")
    assert ready.status_code == 200
    assert (ready.json()["status"], ready.json()["state_store"]) == ("ready", "ok")
    assert ready.json()["healthy_nodes"][LLAMA] >= 1


async def test_the_original_services_model_id_is_served_and_echoed(gateway, http) -> None:  # type: ignore[no-untyped-def]
    old = "meta-llama/Llama-3.1-8B"  # the original catalogue's id: its clients still send it
    response = await chat(http, gateway, {"model": old, "messages": HELLO, "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == old
    assert response.json()["choices"][0]["message"]["content"] == expected_answer(llama_prompt(HELLO), 3)
    card = (await http.get(f"{gateway.v1}/models/{old}", headers=gateway.headers())).json()
    assert card["id"] == LLAMA


HOSTILE_TEXTS = ["", "plain", 'quo"te \\ back', "line\nbreak\ttab", "\u2028\u2029 é 🚀 \x00\x1f", "</script>"]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_the_spliced_token_chunk_is_the_json_it_should_be(chat: bool, text: str) -> None:
    from openai_proxy.api.openai import ChunkEncoder
    from openai_proxy.service import Delta

    encoder = ChunkEncoder("chatcmpl-x", 'model/"odd"', chat=chat)
    for index in (0, 3):
        raw = encoder.text(Delta(index, text)).decode()
        assert raw.startswith("data: ") and raw.endswith("\n\n") and raw.count("\n") == 2
        chunk = json.loads(raw[len("data: "):])
        choice = ({"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None} if chat
                  else {"text": text, "index": index, "logprobs": None, "finish_reason": None})
        assert chunk == {"id": "chatcmpl-x", "object": "chat.completion.chunk" if chat else "text_completion",
                         "created": chunk["created"], "model": 'model/"odd"', "system_fingerprint": chunk[
                             "system_fingerprint"], "choices": [choice], "usage": None}

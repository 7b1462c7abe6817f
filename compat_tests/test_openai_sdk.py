"""The official `openai` SDK (sync and async) against a live gateway over three devnodes."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from .support import (
    BUILTIN_MODELS,
    FREE_MODEL,
    PRO_MODEL,
    Gateway,
    agreeing_messages,
    chat_reference,
    chat_references,
    reference,
)

PROMPT = "Once upon a time"


@pytest.fixture
def client(gateway: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gateway.base_url, api_key=gateway.free_key, max_retries=0) as client:
        yield client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- chat ---------------------------------------------------------------------------------------------------


def test_chat_non_stream(client: OpenAI) -> None:
    messages = user("Hello there")
    response = client.chat.completions.create(model=FREE_MODEL, messages=messages, max_tokens=8, temperature=0)

    assert response.object == "chat.completion"
    assert response.model == FREE_MODEL
    assert response.id.startswith("chatcmpl-")
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content in chat_references(FREE_MODEL, messages, 8)
    assert choice.finish_reason in {"stop", "length"}
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert response._request_id  # x-request-id


def test_chat_stream_matches_non_stream(client: OpenAI) -> None:
    messages = list(agreeing_messages())
    expected = chat_reference(FREE_MODEL, messages, 12)
    whole = client.chat.completions.create(model=FREE_MODEL, messages=messages, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == expected

    stream = client.chat.completions.create(
        model=FREE_MODEL, messages=messages, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks, "empty stream"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    choice_chunks = [chunk for chunk in chunks if chunk.choices]
    assert choice_chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert all(chunk.choices[0].finish_reason is None for chunk in choice_chunks[:-1])
    assert all(chunk.usage is None for chunk in chunks)  # no usage chunk unless asked for


def test_chat_stream_include_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=FREE_MODEL,
        messages=user("Count to five"),
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason in {"stop", "length"}


def test_chat_raw_response_has_request_id(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=FREE_MODEL, messages=user("hi"), max_tokens=2)
    assert raw.status_code == 200
    assert raw.headers.get("x-request-id")
    assert raw.parse().choices[0].message.content


async def test_async_chat_and_stream(gateway: Gateway) -> None:
    messages = list(agreeing_messages())
    expected = chat_reference(FREE_MODEL, messages, 6)
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=gateway.free_key, max_retries=0) as aclient:
        whole = await aclient.chat.completions.create(
            model=FREE_MODEL, messages=messages, max_tokens=6, temperature=0
        )
        assert whole.choices[0].message.content == expected
        assert whole.usage is not None
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

        stream = await aclient.chat.completions.create(
            model=FREE_MODEL,
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        roles: list[str | None] = []
        usage_chunks = 0
        async for chunk in stream:
            if not chunk.choices:
                usage_chunks += 1
                assert chunk.usage is not None
                continue
            roles.append(chunk.choices[0].delta.role)
            parts.append(chunk.choices[0].delta.content or "")
        assert roles[0] == "assistant"
        assert "".join(parts) == expected
        assert usage_chunks == 1


async def test_async_completion(gateway: Gateway) -> None:
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=gateway.free_key, max_retries=0) as aclient:
        response = await aclient.completions.create(model=FREE_MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    assert response.choices[0].text == reference(PROMPT, 5)


# --- completions ------------------------------------------------------------------------------------------


def test_completion_non_stream(client: OpenAI) -> None:
    response = client.completions.create(model=FREE_MODEL, prompt=PROMPT, max_tokens=7, temperature=0)
    assert response.object == "text_completion"
    assert response.id.startswith("cmpl-")
    assert len(response.choices) == 1
    assert response.choices[0].text == reference(PROMPT, 7)  # raw prompts reach every node unchanged
    assert response.choices[0].finish_reason == "length"
    usage = response.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_stream(client: OpenAI) -> None:
    stream = client.completions.create(
        model=FREE_MODEL, prompt=PROMPT, max_tokens=7, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "text_completion" for chunk in chunks)
    choice_chunks = [chunk for chunk in chunks if chunk.choices]
    assert "".join(chunk.choices[0].text for chunk in choice_chunks) == reference(PROMPT, 7)
    assert choice_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_completion_prompt_list_with_n(client: OpenAI) -> None:
    prompts = ["Once upon a time", "In a galaxy far away"]
    response = client.completions.create(model=FREE_MODEL, prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [choice.index for choice in response.choices] == [0, 1, 2, 3]
    texts = [choice.text for choice in response.choices]
    # Prompt-major: choices[i*n:(i+1)*n] belong to prompts[i].
    assert texts == [reference(prompts[0], 4)] * 2 + [reference(prompts[1], 4)] * 2
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


# --- models -------------------------------------------------------------------------------------------------


def test_models_list(client: OpenAI) -> None:
    models = client.models.list()
    ids = [model.id for model in models.data]
    assert ids
    assert set(BUILTIN_MODELS) <= set(ids)
    assert all(model.object == "model" for model in models.data)
    assert all(isinstance(model.created, int) and model.owned_by for model in models.data)


def test_models_retrieve_id_with_slash(client: OpenAI) -> None:
    # openai >= 2.30 sends /v1/models/meta-llama%2FLlama-3.1-8B-Instruct
    model = client.models.retrieve(FREE_MODEL)
    assert model.id == FREE_MODEL
    assert model.object == "model"
    assert model.owned_by == "meta-llama"


def test_models_retrieve_unknown(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nobody/no-such-model")
    assert info.value.status_code == 404


# --- errors -------------------------------------------------------------------------------------------------


def test_bad_request_logit_bias(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=FREE_MODEL, messages=user("hi"), logit_bias={"1": 5}, max_tokens=2)
    error = info.value
    assert error.status_code == 400
    assert error.param == "logit_bias"
    assert error.type == "invalid_request_error"
    assert error.request_id


def test_bad_request_max_tokens_above_free_cap(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=FREE_MODEL, messages=user("hi"), max_tokens=100_000)
    assert info.value.status_code == 400
    assert info.value.param == "max_tokens"
    assert info.value.request_id


def test_authentication_error(gateway: Gateway) -> None:
    with (
        OpenAI(base_url=gateway.base_url, api_key="not-a-jwt", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        bad.chat.completions.create(model=FREE_MODEL, messages=user("hi"), max_tokens=2)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.request_id


def test_unknown_model(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nobody/no-such-model", messages=user("hi"), max_tokens=2)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


def test_free_wallet_asks_for_pro_model(client: OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model=PRO_MODEL, messages=user("hi"), max_tokens=2)
    assert info.value.status_code == 403
    assert info.value.param == "model"
    assert info.value.request_id


def test_pro_wallet_may_use_pro_model(gateway: Gateway) -> None:
    with OpenAI(base_url=gateway.base_url, api_key=gateway.pro_key, max_retries=0) as pro:
        response = pro.chat.completions.create(model=PRO_MODEL, messages=user("hi"), max_tokens=3)
    assert response.choices[0].message.content


def test_no_healthy_node_is_503(dead_gateway: Gateway) -> None:
    with OpenAI(base_url=dead_gateway.base_url, api_key=dead_gateway.free_key, max_retries=0) as dead:
        with pytest.raises(openai.InternalServerError) as info:
            dead.chat.completions.create(model=FREE_MODEL, messages=user("hi"), max_tokens=2)
        assert isinstance(info.value, openai.APIStatusError)
        assert info.value.status_code == 503
        assert info.value.response.headers.get("retry-after")
        assert info.value.request_id

        with pytest.raises(openai.InternalServerError) as stream_info:
            dead.chat.completions.create(model=FREE_MODEL, messages=user("hi"), max_tokens=2, stream=True)
        assert stream_info.value.status_code == 503


def test_mid_stream_failure_raises_api_error(dying_gateway: Gateway) -> None:
    # The node dies after 3 tokens and there is no other node: the gateway has already sent HTTP 200, so it
    # must end the stream with an in-band error event (which the SDK raises) and no [DONE].
    with OpenAI(base_url=dying_gateway.base_url, api_key=dying_gateway.free_key, max_retries=0) as client:
        stream = client.completions.create(model=FREE_MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.extend(choice.text for choice in chunk.choices)
        assert not isinstance(info.value, openai.APIStatusError)  # in-band, not an HTTP status
        assert "".join(received) == reference(PROMPT, 3)

        with pytest.raises(openai.APIStatusError) as whole:
            client.completions.create(model=FREE_MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
        assert whole.value.status_code >= 500


def test_stop_string_is_honoured_and_billed(client: OpenAI) -> None:
    words = reference(PROMPT, 6)  # " w1 w2 w3 w4 w5 w6"
    stop = " " + words.split()[4]
    expected = words[: words.index(stop)]
    response = client.completions.create(model=FREE_MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stop=[stop])
    assert response.choices[0].text == expected
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    # The words before the stop string were generated and must be billed (a regression: the pool once
    # settled its counts only when the garbage collector finalised an abandoned generator).
    assert response.usage.completion_tokens >= len(expected.split())
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_stop_string_in_stream_usage(client: OpenAI) -> None:
    words = reference(PROMPT, 6)
    stop = " " + words.split()[4]
    expected = words[: words.index(stop)]
    stream = client.completions.create(
        model=FREE_MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stop=[stop], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens >= len(expected.split())

"""LlamaIndex `OpenAILike` against the gateway: chat endpoint and completions endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.llms.openai_like import OpenAILike

from .support import FREE_MODEL, Gateway, agreeing_messages, chat_reference, reference

PROMPT = "LlamaIndex says"


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    # Our own clients, closed after each test: OpenAILike would leave its sockets to the garbage collector.
    with httpx.Client() as client:
        yield client


@pytest.fixture
async def async_http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def llm(
    gateway: Gateway,
    *,
    chat: bool,
    max_tokens: int,
    http_client: httpx.Client | None = None,
    async_http_client: httpx.AsyncClient | None = None,
) -> OpenAILike:
    return OpenAILike(
        model=FREE_MODEL,
        api_base=gateway.base_url,
        api_key=gateway.free_key,
        is_chat_model=chat,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
        timeout=30,
        http_client=http_client,
        async_http_client=async_http_client,
    )


def conversation() -> tuple[list[ChatMessage], list[dict[str, str]]]:
    messages = list(agreeing_messages(FREE_MODEL, "What is LlamaIndex?"))
    return [ChatMessage(role=MessageRole.USER, content=m["content"]) for m in messages], messages


def test_chat(gateway: Gateway, http_client: httpx.Client) -> None:
    chat_messages, messages = conversation()
    response = llm(gateway, chat=True, max_tokens=8, http_client=http_client).chat(chat_messages)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == chat_reference(FREE_MODEL, messages, 8)


def test_stream_chat(gateway: Gateway, http_client: httpx.Client) -> None:
    chat_messages, messages = conversation()
    responses = list(llm(gateway, chat=True, max_tokens=8, http_client=http_client).stream_chat(chat_messages))
    assert responses
    assert "".join(r.delta or "" for r in responses) == chat_reference(FREE_MODEL, messages, 8)
    assert responses[-1].message.content == chat_reference(FREE_MODEL, messages, 8)


async def test_async_chat(gateway: Gateway, async_http_client: httpx.AsyncClient) -> None:
    chat_messages, messages = conversation()
    response = await llm(gateway, chat=True, max_tokens=5, async_http_client=async_http_client).achat(chat_messages)
    assert response.message.content == chat_reference(FREE_MODEL, messages, 5)


def test_complete(gateway: Gateway, http_client: httpx.Client) -> None:
    response = llm(gateway, chat=False, max_tokens=8, http_client=http_client).complete(PROMPT)
    assert response.text == reference(PROMPT, 8)


def test_stream_complete(gateway: Gateway, http_client: httpx.Client) -> None:
    responses = list(llm(gateway, chat=False, max_tokens=8, http_client=http_client).stream_complete(PROMPT))
    assert responses
    assert "".join(r.delta or "" for r in responses) == reference(PROMPT, 8)
    assert responses[-1].text == reference(PROMPT, 8)

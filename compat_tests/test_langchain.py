"""langchain-openai's `ChatOpenAI` (chat completions) and `OpenAI` (legacy completions) against the gateway."""

from __future__ import annotations

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI, OpenAI
from pydantic import SecretStr

from .support import FREE_MODEL, Gateway, agreeing_messages, chat_reference, reference


def chat_model(gateway: Gateway, **kwargs: object) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=gateway.base_url,
        api_key=SecretStr(gateway.free_key),
        model=FREE_MODEL,
        temperature=0,
        max_retries=0,
        **kwargs,  # type: ignore[arg-type]
    )


def question() -> tuple[str, list[dict[str, str]]]:
    messages = list(agreeing_messages(FREE_MODEL, "What is LangChain?"))
    return messages[0]["content"], messages


def test_chat_invoke(gateway: Gateway) -> None:
    text, messages = question()
    answer = chat_model(gateway, max_tokens=10).invoke(text)
    assert isinstance(answer, AIMessage)
    assert answer.content == chat_reference(FREE_MODEL, messages, 10)
    assert answer.response_metadata["finish_reason"] in {"stop", "length"}
    assert answer.response_metadata["model_name"] == FREE_MODEL
    usage = answer.usage_metadata
    assert usage is not None
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_chat_stream_concatenates_to_invoke(gateway: Gateway) -> None:
    text, _ = question()
    llm = chat_model(gateway, max_tokens=10)
    whole = llm.invoke(text)
    chunks = list(llm.stream(text))
    assert chunks
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert "".join(str(chunk.content) for chunk in chunks) == whole.content
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == whole.content
    assert merged.response_metadata.get("finish_reason") in {"stop", "length"}


def test_chat_stream_usage(gateway: Gateway) -> None:
    # With a custom base_url stream_usage is off by default; switched on, it sends stream_options.
    text, _ = question()
    chunks = list(chat_model(gateway, max_tokens=4, stream_usage=True).stream(text))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert isinstance(merged, AIMessageChunk)
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] > 0


def test_chat_batch(gateway: Gateway) -> None:
    stems = ("First question", "Second question", "Third question")
    conversations = [list(agreeing_messages(FREE_MODEL, stem)) for stem in stems]
    answers = chat_model(gateway, max_tokens=5).batch([c[0]["content"] for c in conversations])
    assert len(answers) == 3
    for answer, messages in zip(answers, conversations, strict=True):
        assert answer.content == chat_reference(FREE_MODEL, messages, 5)


def test_chat_max_tokens_is_honoured(gateway: Gateway) -> None:
    # ChatOpenAI renames max_tokens to max_completion_tokens on the wire; the gateway must honour it.
    text, messages = question()
    answer = chat_model(gateway, max_tokens=3).invoke(text)
    assert answer.content == chat_reference(FREE_MODEL, messages, 3)
    assert len(str(answer.content).split()) == 3
    assert answer.response_metadata["finish_reason"] == "length"


def test_completions_generate_keeps_prompt_order(gateway: Gateway) -> None:
    prompts = ["The first prompt", "A second, different prompt", "And the third"]
    llm = OpenAI(
        base_url=gateway.base_url,
        api_key=SecretStr(gateway.free_key),
        model=FREE_MODEL,
        temperature=0,
        max_tokens=6,
        max_retries=0,
    )
    result = llm.generate(prompts)
    assert len(result.generations) == len(prompts)
    for generations, prompt in zip(result.generations, prompts, strict=True):
        assert len(generations) == 1
        assert generations[0].text == reference(prompt, 6)
    assert result.llm_output is not None
    assert result.llm_output["token_usage"]["total_tokens"] > 0

"""Raw HTTP with curl: the SSE framing of a streaming chat completion, byte for byte as a client reads it."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from .support import FREE_MODEL, Gateway, agreeing_messages, chat_reference

CURL_TIMEOUT = 30


@pytest.fixture(scope="module")
def curl() -> str:
    exe = shutil.which("curl")
    if exe is None:
        pytest.fail("curl is not installed; the compat suite needs it")
    return exe


def run_curl(curl: str, gateway: Gateway, path: str, body: dict[str, Any]) -> tuple[list[str], str]:
    """POST `body` as the free wallet; returns (response header lines, response body)."""
    result = subprocess.run(
        [
            curl, "-sS", "-N", "-D", "-", f"{gateway.base_url}{path}",
            "-H", f"Authorization: Bearer {gateway.free_key}",
            "-H", "Content-Type: application/json",
            "-d", json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=CURL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    head, _, payload = result.stdout.replace("\r\n", "\n").partition("\n\n")
    return head.splitlines(), payload


def header(lines: list[str], name: str) -> str | None:
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def test_streaming_chat_sse_framing(curl: str, gateway: Gateway) -> None:
    messages = list(agreeing_messages(FREE_MODEL, "Stream to curl"))
    body = {"model": FREE_MODEL, "messages": messages, "max_tokens": 6, "temperature": 0, "stream": True}
    head, payload = run_curl(curl, gateway, "/chat/completions", body)

    assert head[0].split()[1] == "200", head[0]
    content_type = header(head, "content-type")
    assert content_type is not None
    assert content_type.startswith("text/event-stream")
    assert header(head, "x-request-id")

    lines = payload.split("\n")
    assert payload.endswith("\n\n"), "every event ends with a blank line"
    events = [line for line in lines if line]
    assert all(line.startswith(("data: ", ":")) for line in events), events  # no `event:` lines
    data = [line.removeprefix("data: ") for line in events if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text == chat_reference(FREE_MODEL, messages, 6)
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_non_stream_chat(curl: str, gateway: Gateway) -> None:
    messages = list(agreeing_messages(FREE_MODEL, "Answer curl"))
    body = {"model": FREE_MODEL, "messages": messages, "max_tokens": 6, "temperature": 0}
    head, payload = run_curl(curl, gateway, "/chat/completions", body)

    assert head[0].split()[1] == "200", head[0]
    assert (header(head, "content-type") or "").startswith("application/json")
    response = json.loads(payload)
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"] == chat_reference(FREE_MODEL, messages, 6)
    usage = response["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_error_is_openai_envelope(curl: str, gateway: Gateway) -> None:
    body = {"model": "nobody/no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    head, payload = run_curl(curl, gateway, "/chat/completions", body)
    assert head[0].split()[1] == "404", head[0]
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found"

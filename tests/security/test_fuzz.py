"""Property-based attacks: schemathesis against the gateway's own /openapi.json, and hypothesis properties of
the byte-level edge cases (SSE framing of hostile content, text split across node chunks).

schemathesis generates requests for every documented operation, valid and invalid (positive and negative
modes), with a valid service key and without one, against a real `openai-proxy serve` process. Every response
must be: never a 5xx (the devnode behind it is healthy), a status the operation documents, and, for every
error, exactly the OpenAI envelope. Streams must frame as SSE and end with `[DONE]` or an in-band error.
CI runs FUZZ_EXAMPLES=25 examples per operation and auth mode (the default); the README's figures come from
`FUZZ_EXAMPLES=500 pytest tests/security/test_fuzz.py -s -k schemathesis`, run by hand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openai._streaming import SSEDecoder
from schemathesis import GenerationMode

from openai_proxy.api.openai import ChunkEncoder
from openai_proxy.api.sse import DONE
from openai_proxy.service import Delta, Finished

from ..reliability.hostile import SERVICE_KEY, Hostile
from ..reliability.processes import Proc, ProcessSet, mint, wallet

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class Run:
    examples: int = 0
    failures: list[str] = field(default_factory=list)


@pytest.fixture
def gateway(hostile: Hostile) -> Proc:
    """The session's hostile gateway: its LLAMA node ends every answer after 8 tokens, whatever max_tokens says."""
    return hostile.gateway


def judge(response: Any, documented: set[str]) -> str | None:
    """Why this response breaks the contract, or None."""
    status = response.status_code
    if status >= 500:
        return f"HTTP {status}: {response.text[:300]}"
    if str(status) not in documented:
        return f"HTTP {status} is not documented ({sorted(documented)}): {response.text[:200]}"
    content_type = response.headers.get("content-type") or ""
    content_type = content_type[0] if isinstance(content_type, list) else content_type  # schemathesis: lists
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"HTTP {status} error is not JSON: {response.text[:200]}"
        if not (content_type.startswith("application/json") and isinstance(body, dict) and set(body) == {"error"}
                and isinstance(body["error"], dict) and set(body["error"]) == ERROR_FIELDS):
            return f"HTTP {status} error is not the OpenAI envelope: {response.text[:200]}"
    elif content_type.startswith("text/event-stream"):
        return judge_stream(response.content)
    return None


def judge_stream(raw: bytes) -> str | None:
    events = list(SSEDecoder().iter_bytes(iter([raw])))
    if not events:
        return "empty event stream"
    if any(event.data == "[DONE]" for event in events[:-1]):
        return "[DONE] before the end of the stream"
    last = events[-1].data
    if last != "[DONE]" and "error" not in json.loads(last):
        return f"stream ends without [DONE] or an error: {last[:200]}"
    for event in events:
        if event.data != "[DONE]":
            try:
                json.loads(event.data)
            except ValueError:
                if not event.data:
                    continue
                # The legacy /api/v1/inference/stream sends raw text events; only /v1 sends JSON.
                continue
    return None


def fuzz(gateway: Proc, headers: dict[str, str]) -> Run:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    run = Run()
    for result in schema.get_all_operations():
        operation = result.ok()
        documented = set(spec["paths"][operation.path][operation.method.lower()]["responses"])
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(gateway, operation, mode, headers, documented, run)
    return run


def _fuzz_operation(gateway: Proc, operation: Any, mode: GenerationMode, headers: dict[str, str],
                    documented: set[str], run: Run) -> None:
    label = f"{operation.method.upper()} {operation.path} ({mode.value})"

    @settings(max_examples=max(1, EXAMPLES // 2), deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode, headers=headers or None))
    def check(case: Any) -> None:
        run.examples += 1
        try:
            response = case.call(base_url=gateway.url, headers=headers, timeout=30)
        except Exception as exc:  # boundary: a dropped connection is itself a finding, never a crash of the run
            run.failures.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        if (problem := judge(response, documented)) is not None:
            run.failures.append(f"{label}: {problem}")

    with contextlib.suppress(Unsatisfiable):  # negative mode for an operation without input: nothing to send
        check()


def test_schemathesis_with_a_valid_key_finds_no_5xx_and_only_documented_envelopes(gateway: Proc) -> None:
    run = fuzz(gateway, {"Authorization": f"Bearer {SERVICE_KEY}"})
    print(f"\nschemathesis, valid key: {run.examples} examples, {len(run.failures)} failures")
    assert run.failures == [], "\n".join(run.failures[:20])


def test_schemathesis_without_a_token_finds_no_5xx_and_only_documented_envelopes(gateway: Proc) -> None:
    run = fuzz(gateway, {})
    print(f"\nschemathesis, no token: {run.examples} examples, {len(run.failures)} failures")
    assert run.failures == [], "\n".join(run.failures[:20])


# --- SSE framing ---------------------------------------------------------------------------------------------

HOSTILE_TEXT = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.sampled_from(["\n", "\r\n", "\r", "\n\n", "data: ", "data:", "[DONE]", "data: [DONE]\n\n", ": keep-alive",
                         "event: error", "id: 1", "\u2028", "\u0085", "\x00", "😀", "é", '"', "\\"]),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=HOSTILE_TEXT, chat=st.booleans())
def test_the_client_side_sse_parse_of_our_stream_equals_the_original_text(pieces: list[str], chat: bool) -> None:
    """Content with newlines, `data:` and `[DONE]` inside, framed by the gateway's encoder and parsed by the
    openai SDK's own SSE decoder, comes back as exactly the text that went in."""
    encoder = ChunkEncoder("chatcmpl-x", "m", chat=chat)
    raw = b"".join([encoder.role(0)] if chat else [])
    raw += b"".join(encoder.text(Delta(0, piece)) for piece in pieces)
    raw += encoder.finished(Finished(0, "stop")) + DONE
    events = list(SSEDecoder().iter_bytes(iter([raw[i:i + 7] for i in range(0, len(raw), 7)])))
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(event.data) for event in events[:-1]]
    choices = [chunk["choices"][0] for chunk in chunks]
    text = "".join((c["delta"].get("content") or "") if chat else c["text"] for c in choices)
    assert text == "".join(pieces)


# --- text split across node chunks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway over a Petals WebSocket node that sends back, one step each, the pieces the prompt names."""
    workdir = tmp_path_factory.mktemp("scripted")
    procs = ProcessSet(workdir)
    script = workdir / "scripted_node.py"
    script.write_text(SCRIPTED_NODE)
    try:
        node = procs.script(script)
        gateway = procs.gateway([f"petals+ws://127.0.0.1:{node.port}"], pro_addresses=[PIECES_WALLET])
        asyncio.run(gateway.wait_ready("/ready"))
        yield gateway.url
    finally:
        procs.close()


PIECES_WALLET = wallet()
SCRIPTED_NODE = '''
import asyncio, base64, json, sys
from websockets.asyncio.server import serve

async def session(ws):
    async for raw in ws:
        message = json.loads(raw)
        if message["type"] == "open_inference_session":
            await ws.send(json.dumps({"ok": True}))
            continue
        pieces = json.loads(base64.b64decode(message["inputs"].split("PIECES:")[1]))
        for i, piece in enumerate(pieces):
            await ws.send(json.dumps({"ok": True, "outputs": piece, "token_count": 1,
                                      "stop": i == len(pieces) - 1}))

async def health(connection, request):
    if request.path == "/health":
        return connection.respond(200, "{\\"status\\": \\"ok\\"}")
    return None

async def main():
    async with serve(session, "127.0.0.1", int(sys.argv[1]), process_request=health):
        await asyncio.Future()

asyncio.run(main())
'''


def _split(text: str, cuts: list[int], *, utf16: bool) -> list[str]:
    """`text` cut at code point boundaries, or at UTF-16 code unit boundaries (as a JavaScript node slicing
    its output would: an emoji's two surrogate halves can then land in different pieces)."""
    units = text.encode("utf-16-le", "surrogatepass") if utf16 else None
    size = len(units) // 2 if units is not None else len(text)
    points = sorted({0, size, *(c % (size + 1) for c in cuts)})
    if units is None:
        return [text[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]
    return [units[2 * a:2 * b].decode("utf-16-le", "surrogatepass") for a, b in zip(points, points[1:], strict=False)
            if b > a]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30),
       cuts=st.lists(st.integers(0, 60), max_size=10), utf16=st.booleans(), stream=st.booleans())
def test_multibyte_text_split_across_petals_steps_arrives_intact(scripted: str, text: str, cuts: list[int],
                                                                utf16: bool, stream: bool) -> None:
    """Characters of any width (é, 😀, CJK, combining marks) split across Petals WebSocket steps arrive intact
    through the real client, pool, stop scanner and SSE encoder, whether the node cut between code points or
    between UTF-16 code units (JSON's "\\ud83d" escapes carry a lone half; the gateway joins the pair again).
    A split inside a character's UTF-8 bytes cannot reach the gateway: a node's JSON carries text, not bytes."""
    pieces = _split(text, cuts, utf16=utf16)
    prompt = "PIECES:" + base64.b64encode(json.dumps(pieces).encode()).decode()
    body = {"model": "bigscience/bloom-560m", "prompt": prompt, "max_tokens": len(pieces) + 2, "stream": stream}
    headers = {"Authorization": f"Bearer {mint(PIECES_WALLET)}"}
    response = httpx.post(f"{scripted}/v1/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    if stream:
        events = list(SSEDecoder().iter_bytes(iter([response.content])))
        assert events[-1].data == "[DONE]"
        got = "".join(json.loads(e.data)["choices"][0]["text"] for e in events[:-1] if json.loads(e.data)["choices"])
    else:
        got = response.json()["choices"][0]["text"]
    assert got == text


class _SplitBody:
    """What `sse_batches` reads of an aiohttp response (`content.iter_any()`), cut at chosen byte offsets: a
    double of the network, so every split (inside a multibyte character, between `\\r` and `\\n`, inside
    `data:`) is exercised exactly, which real TCP reads only do by chance."""

    def __init__(self, body: bytes, cuts: list[int]) -> None:
        edges = [0, *sorted(set(cuts)), len(body)]
        self.blocks = [body[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
        self.content = self

    async def iter_any(self) -> Any:
        for block in self.blocks:
            yield block


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=12), min_size=1, max_size=8),
       crlf=st.booleans(), data=st.data())
def test_node_sse_split_at_any_byte_yields_the_same_payloads(texts: list[str], crlf: bool, data: Any) -> None:
    from openai_proxy.nodes.clients.http import sse_batches

    newline = "\r\n" if crlf else "\n"
    payloads = [json.dumps({"choices": [{"text": text}]}, ensure_ascii=False) for text in texts]
    body = "".join(f"data: {payload}{newline}{newline}" for payload in payloads).encode() + b"data: [DONE]\n\n"
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(body) - 1), max_size=40))

    async def parse() -> list[bytes]:
        return [item async for batch in sse_batches("node", _SplitBody(body, cuts)) for item in batch]  # type: ignore[arg-type]

    received = asyncio.run(parse())
    assert received[-1] == b"[DONE]"
    assert [json.loads(item)["choices"][0]["text"] for item in received[:-1]] == texts


_EVENT_STYLES = ("simple", "crlf", "no_space", "comment", "field", "two_lines")


def _render_event(payload: str, style: str) -> tuple[str, str]:
    """(the event as a node could write it, the payload an SSE reader must get from it)."""
    if style == "crlf":
        return f"data: {payload}\r\n\r\n", payload
    if style == "no_space":  # then a leading space of the payload is the one space SSE takes off
        return f"data:{payload}\n\n", payload.removeprefix(" ")
    if style == "comment":
        return f": keep-alive\ndata: {payload}\n\n", payload
    if style == "field":
        return f"event: message\nid: 7\ndata: {payload}\n\n", payload
    if style == "two_lines":
        return f"data: {payload}\ndata: {payload}\n\n", f"{payload}\n{payload}"
    return f"data: {payload}\n\n", payload


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.tuples(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
                                         max_size=10), st.sampled_from(_EVENT_STYLES)), min_size=1, max_size=10),
       data=st.data())
def test_node_sse_in_any_mix_of_shapes_and_splits_yields_every_payload(events: list[tuple[str, str]],
                                                                        data: Any) -> None:
    """Nodes write SSE in more shapes than `data: ...` and a blank line (CRLF, no space after the colon,
    comments, other fields, data over several lines): in any mix, cut at any byte, every payload comes out."""
    from openai_proxy.nodes.clients.http import sse_batches

    rendered = [_render_event(text, style) for text, style in events]
    body = "".join(wire for wire, _ in rendered).encode()
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=max(1, len(body) - 1)), max_size=30))

    async def parse() -> list[bytes]:
        return [item async for batch in sse_batches("node", _SplitBody(body, cuts)) for item in batch]  # type: ignore[arg-type]

    assert [item.decode() for item in asyncio.run(parse())] == [payload for _, payload in rendered]

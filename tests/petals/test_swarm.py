"""The gateway over a real Petals swarm (issue 9), once on one server and once on a two-server chain.

Every answer is checked against plain transformers on the same weights and the same rendered prompt
(`reference`): greedy output must be identical, token for token. Clients: the official openai SDK against
`openai-proxy serve`, whose nodes are two petals-nodes (`petals+ws://`); httpx and websockets for the
petals-node's own API. The failover test kills a petals-node mid-answer, so it comes last.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
from openai import OpenAI
from websockets.sync.client import ClientConnection, connect

from openai_proxy.templates import ChatMessage, get_template
from openai_proxy.tokens import TokenCounter

from .conftest import MODEL, Deployment, Greedy, PetalsNode, Reference, get_json
from .support import wait_for

HELLO = [{"role": "user", "content": "Hello there"}]
STORY = "Once upon a time"
HANG_GUARD = 120.0  # seconds: only ever reached when something hangs (the machine is slow and shared)


def plain_prompt(messages: list[dict[str, str]]) -> str:
    return get_template("plain").render([ChatMessage(m["role"], m["content"]) for m in messages])


def sdk(deployment: Deployment) -> OpenAI:
    return OpenAI(base_url=deployment.v1, api_key=deployment.token, max_retries=0, timeout=120)


def chat(deployment: Deployment, **body: Any) -> Any:
    def call() -> Any:
        with sdk(deployment) as client:
            return client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, **body)

    return deployment.run(call)


def stream_chat(deployment: Deployment, **body: Any) -> tuple[list[str], str | None, Any]:
    """The content deltas, the finish reason and the usage of a streamed chat answer."""
    def call() -> tuple[list[str], str | None, Any]:
        deltas, finish, usage = [], None, None
        with sdk(deployment) as client:
            for chunk in client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, stream=True,
                                                        stream_options={"include_usage": True}, **body):
                for choice in chunk.choices:
                    if choice.delta.content:
                        deltas.append(choice.delta.content)
                    finish = choice.finish_reason or finish
                usage = chunk.usage or usage
        return deltas, finish, usage

    return deployment.run(call)  # type: ignore[no-any-return]


# --- the OpenAI surface ---------------------------------------------------------------------------------


def test_greedy_chat_equals_transformers(deployment: Deployment, reference: Reference) -> None:
    prompt = plain_prompt(HELLO)
    expected = reference.greedy(prompt, 24)
    assert len(expected.ids) == 24 and expected.text  # the model does not end early on this prompt
    reply = chat(deployment, max_tokens=24)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 24
    # Counted by the model's own tokenizer (the catalogue names its tokenizer.json), not tiktoken's estimate.
    assert reply.usage.prompt_tokens == expected.prompt_tokens != TokenCounter().count(prompt)


def test_greedy_completion_equals_transformers(deployment: Deployment, reference: Reference) -> None:
    expected = reference.greedy(STORY, 20)

    def call() -> Any:
        with sdk(deployment) as client:
            return client.completions.create(model=MODEL, prompt=STORY, max_tokens=20, temperature=0)

    reply = deployment.run(call)
    assert reply.choices[0].text == expected.text
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected.prompt_tokens, len(expected.ids))


def test_stream_delivers_the_same_text_token_by_token(deployment: Deployment, reference: Reference) -> None:
    expected = reference.greedy(plain_prompt(HELLO), 16)
    deltas, finish, usage = stream_chat(deployment, max_tokens=16)
    assert deltas == expected.pieces  # one delta per token, each the token's own text
    assert finish == "length"
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.prompt_tokens, 16)


def test_max_tokens_ends_the_answer_after_that_many_tokens(deployment: Deployment, reference: Reference) -> None:
    expected = reference.greedy(plain_prompt(HELLO), 5)
    reply = chat(deployment, max_tokens=5)
    assert reply.choices[0].message.content == expected.text
    assert (reply.choices[0].finish_reason, reply.usage.completion_tokens) == ("length", 5)


def test_a_stop_string_cuts_the_answer_before_it(deployment: Deployment, reference: Reference) -> None:
    full = reference.greedy(plain_prompt(HELLO), 40)
    start = len("".join(full.pieces[:6]))
    stop = full.text[start : start + 3]
    text = full.text[: full.text.index(stop)]
    # The node's answer ends with the token that completes the stop string; the gateway counts up to it.
    tokens = next(k for k in range(1, len(full.pieces) + 1) if stop in "".join(full.pieces[:k]))
    reply = chat(deployment, max_tokens=40, stop=[stop])
    assert reply.choices[0].message.content == text
    assert (reply.choices[0].finish_reason, reply.usage.completion_tokens) == ("stop", tokens)
    deltas, finish, usage = stream_chat(deployment, max_tokens=40, stop=stop)
    assert ("".join(deltas), finish, usage.completion_tokens) == (text, "stop", tokens)


# --- the petals-node's own API (upstream-protocols.md §12) -------------------------------------------


def test_node_health_names_the_model_and_says_it_is_ready(deployment: Deployment) -> None:
    health = deployment.node_health(deployment.nodes[0])
    assert (health["status"], health["ready"], health["model"]) == ("ok", True, MODEL)
    assert health["model_path"] == str(deployment.model_dir)


def test_http_api_takes_form_fields_or_the_query_string(deployment: Deployment, reference: Reference) -> None:
    expected = reference.greedy(STORY, 8)
    url = f"{deployment.nodes[0].url}/api/v1/generate"

    def call() -> list[Any]:
        with httpx.Client(timeout=60) as client:
            form = client.post(url, data={"model": MODEL, "inputs": STORY, "max_new_tokens": "8", "do_sample": "0"})
            total = expected.prompt_tokens + 8  # max_length counts the prompt too
            query = client.post(url, params={"model": str(deployment.model_dir), "inputs": STORY, "max_length": total})
            wrong = client.post(url, data={"model": "some/other-model", "inputs": STORY, "max_new_tokens": "3"})
        return [(r.status_code, r.json()) for r in (form, query, wrong)]

    form, query, wrong = deployment.run(call)
    assert form == (200, {"ok": True, "outputs": expected.text})
    assert query == (200, {"ok": True, "outputs": expected.text})
    assert wrong[0] == 200 and wrong[1]["ok"] is False and "some/other-model" in wrong[1]["traceback"]


def _exchange(socket: ClientConnection, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one message; collect replies up to `stop: true` or a failure."""
    socket.send(json.dumps(message))
    replies = []
    while True:
        reply = json.loads(socket.recv(timeout=60))
        replies.append(reply)
        if reply.get("stop", True) or not reply.get("ok"):  # (`{"ok": true}` opens a session: no "stop")
            return replies


def test_ws_api_streams_a_session_step_by_step(deployment: Deployment, reference: Reference) -> None:
    expected = reference.greedy(STORY, 12)
    stop = expected.pieces[7]  # ends the first generate call after 8 tokens (unless its text came earlier)
    first_turn = next(k for k in range(1, 13) if "".join(expected.pieces[:k]).endswith(stop))
    url = deployment.nodes[0].url.replace("http://", "ws://") + "/api/v2/generate"

    def call() -> list[list[dict[str, Any]]]:
        with connect(url) as socket:
            opened = _exchange(socket, {"type": "open_inference_session", "model": MODEL,
                                        "max_length": expected.prompt_tokens + 12})
            streamed = _exchange(socket, {"type": "generate", "inputs": STORY, "max_new_tokens": 1,
                                          "stop_sequence": stop})
            rest = _exchange(socket, {"type": "generate", "max_new_tokens": 12 - first_turn})
            too_long = _exchange(socket, {"type": "generate", "max_new_tokens": 1})
        return [opened, streamed, rest, too_long]

    opened, streamed, rest, too_long = deployment.run(call)
    assert opened == [{"ok": True}]
    assert streamed == [{"ok": True, "outputs": piece, "stop": i == first_turn - 1, "token_count": 1}
                        for i, piece in enumerate(expected.pieces[:first_turn])]
    # Without stop_sequence: one reply for the whole step, continuing the same session (its caches).
    assert rest == [{"ok": True, "outputs": "".join(expected.pieces[first_turn:]), "stop": True,
                     "token_count": 12 - first_turn}]
    assert too_long[0]["ok"] is False and "max_length" in too_long[0]["traceback"]


def test_ws_extra_stop_sequences_count_only_with_a_one_token_stop_sequence(
    deployment: Deployment, reference: Reference
) -> None:
    expected = reference.greedy(STORY, 12)
    extra = expected.pieces[3]
    at_extra = next(k for k in range(1, 13) if "".join(expected.pieces[:k]).endswith(extra))
    url = deployment.nodes[0].url.replace("http://", "ws://") + "/api/v2/generate"

    def generate(stop_sequence: str) -> list[dict[str, Any]]:
        with connect(url) as socket:
            _exchange(socket, {"type": "open_inference_session", "model": MODEL, "max_length": 64})
            return _exchange(socket, {"type": "generate", "inputs": STORY, "max_new_tokens": 1,
                                      "stop_sequence": stop_sequence, "extra_stop_sequences": [extra]})

    one_token = deployment.run(generate, "</s>")  # the end-of-sequence token: one token
    assert "".join(r["outputs"] for r in one_token) == "".join(expected.pieces[:at_extra])
    assert len(expected.pieces) == 12  # (the model never ends on its own here)
    # A stop_sequence of several tokens that never comes: the extra one is ignored, the session runs full.
    several_tokens = deployment.run(generate, expected.text[-3:] + "never")
    assert several_tokens[-1]["ok"] is False and "max_length" in several_tokens[-1]["traceback"]
    assert sum(r["token_count"] for r in several_tokens[:-1]) > at_extra


def _ws_url(node: PetalsNode) -> str:
    return node.url.replace("http://", "ws://") + "/api/v2/generate"


def _sessions_closed(deployment: Deployment, nodes: list[PetalsNode]) -> None:
    """Wait (bounded) until no node has an open session or a running model call; from the test thread."""
    def all_closed() -> bool | None:
        healths = [deployment.node_health(node) for node in nodes]
        return all(h["sessions"] == 0 and h["generating"] == 0 for h in healths) or None

    wait_for(all_closed, "every petals-node session to close", HANG_GUARD, tuple(node.proc for node in nodes))


def test_health_answers_while_a_long_generation_runs(deployment: Deployment, reference: Reference) -> None:
    """Generation runs off the event loop: /health is served *during* a model call (`generating: 1`), which a
    node running its model calls on the event loop could never report. One step of 300 tokens (no
    stop_sequence: a single `generate` call) is long enough to be caught by polling; the bounds are hang
    guards only."""
    tokens = 300
    expected = reference.greedy(STORY, tokens)
    assert len(expected.ids) == tokens  # (the model does not end early on this prompt)
    node = deployment.nodes[0]
    _sessions_closed(deployment, [node])

    def call() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with connect(_ws_url(node)) as socket:
            _exchange(socket, {"type": "open_inference_session", "model": MODEL,
                               "max_length": expected.prompt_tokens + tokens})
            socket.send(json.dumps({"type": "generate", "inputs": STORY, "max_new_tokens": tokens}))

            def health_during_the_step() -> dict[str, Any] | None:
                with httpx.Client(timeout=HANG_GUARD) as client:  # a hang guard, not a latency bound
                    health: dict[str, Any] = client.get(f"{node.url}/health").json()
                return health if health["generating"] else None

            during = wait_for(health_during_the_step, "/health to report the running step", HANG_GUARD,
                              (node.proc,))
            return during, [json.loads(socket.recv(timeout=HANG_GUARD))]

    during, replies = deployment.run(call)
    assert (during["status"], during["generating"], during["sessions"]) == ("ok", 1, 1)
    # The step the health check overlapped was not disturbed by it.
    assert replies == [{"ok": True, "outputs": expected.text, "stop": True, "token_count": tokens}]


def test_every_session_closes_with_its_socket(deployment: Deployment) -> None:
    """One inference session per socket, closed with it: after every earlier test (the gateway's sockets,
    the WebSocket tests above), then after a socket that leaves mid-generation and one that never generates,
    both nodes are back to 0 open sessions."""
    nodes = deployment.nodes
    _sessions_closed(deployment, nodes)  # everything the earlier tests opened
    node = nodes[0]
    total = deployment.node_health(node)["sessions_total"]

    def leave_mid_generation() -> tuple[dict[str, Any], dict[str, Any]]:
        with connect(_ws_url(node)) as socket:
            _exchange(socket, {"type": "open_inference_session", "model": MODEL, "max_length": 900})
            # A stop sequence that never comes: the node would step until max_length; we leave after one step.
            socket.send(json.dumps({"type": "generate", "inputs": STORY, "max_new_tokens": 1,
                                    "stop_sequence": "never\u0007there"}))
            first = json.loads(socket.recv(timeout=HANG_GUARD))
            return first, get_json(f"{node.url}/health")

    first, while_open = deployment.run(leave_mid_generation)
    assert first["ok"] is True and first["stop"] is False
    assert (while_open["sessions"], while_open["sessions_total"]) == (1, total + 1)
    _sessions_closed(deployment, [node])

    def open_and_leave() -> dict[str, Any]:
        with connect(_ws_url(node)) as socket:
            opened = _exchange(socket, {"type": "open_inference_session", "model": MODEL, "max_length": 16})
            assert opened == [{"ok": True}]
            return get_json(f"{node.url}/health")  # type: ignore[no-any-return]

    while_open = deployment.run(open_and_leave)
    assert (while_open["sessions"], while_open["sessions_total"]) == (1, total + 2)
    _sessions_closed(deployment, [node])
    assert deployment.node_health(node)["sessions_total"] == total + 2  # one session per socket, no more


# --- failover: last, because it kills a node -------------------------------------------------------------


def is_one_failover_answer(reference: Reference, prompt: str, full: Greedy, answer: str, seen: str) -> bool:
    """Whether `answer` is exactly one greedy answer carried over a failover: nothing repeated, nothing missing.

    A continuation (NodeRequest.continued) sends the survivor the rendered prompt plus the text produced so
    far *as text*, with max_new_tokens reduced by the tokens already counted. The survivor re-tokenises that
    text, and BPE may split it differently at the cut than the first node's generated ids were (e.g. " t" +
    "he" generated, " the" re-encoded); the survivor then continues greedily from the *re-tokenised* text, and
    its output need not be the uninterrupted greedy answer `full`. What holds exactly, whatever the cut: for
    some n,
      * the first node's part is the uninterrupted greedy answer's first n tokens, `full.text[:k]`, and covers
        at least what the client had seen when the node was killed (`k >= len(seen)`);
      * the rest is exactly plain transformers' greedy continuation of (prompt + that text), of exactly
        len(full.ids) - n tokens (the budget the pool gives the survivor).
    Where re-tokenisation at the cut is stable, that continuation *is* the rest of `full`, so the property is
    `answer == full.text` (with this tiny model and prompt every cut is stable: measured, so this is what
    normally passes). Otherwise the cut is searched for, latest first, with one reference run per candidate.
    """
    if answer == full.text:
        return True
    total = len(full.ids)
    offsets = [len("".join(full.pieces[:n])) for n in range(total + 1)]
    for n in range(total - 1, 0, -1):  # the survivor had at least one token to make
        k = offsets[n]
        if k < len(seen):
            return False
        if answer[:k] != full.text[:k]:
            continue  # past where the answer leaves the uninterrupted one: the cut is earlier
        rest = reference.greedy(prompt + answer[:k], total - n)
        if len(rest.ids) == total - n and answer == answer[:k] + rest.text:
            return True
    return False


def test_killing_the_node_mid_answer_continues_on_the_other(deployment: Deployment, reference: Reference) -> None:
    prompt = plain_prompt(HELLO)
    full = reference.greedy(prompt, 300)
    assert len(full.ids) == 300  # (the model does not end early on this prompt)
    before = {node.url: deployment.node_health(node)["sessions_total"] for node in deployment.nodes}

    def call() -> tuple[str, str, str | None, Any, str]:
        deltas: list[str] = []
        seen_at_kill, killed, finish, usage = "", "", None, None
        with sdk(deployment) as client:
            for chunk in client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=300,
                                                        stream=True, stream_options={"include_usage": True}):
                for choice in chunk.choices:
                    deltas.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                usage = chunk.usage or usage
                if not killed and "".join(deltas):
                    serving = [n for n in deployment.nodes
                               if get_json(f"{n.url}/health")["sessions_total"] > before[n.url]]
                    assert len(serving) == 1, "exactly one node opened a session for this stream"
                    serving[0].proc.signal_group(signal.SIGKILL)
                    killed, seen_at_kill = serving[0].url, "".join(deltas)
        return "".join(deltas), seen_at_kill, finish, usage, killed

    text, seen_at_kill, finish, usage, killed = deployment.run(call)
    survivor = next(node for node in deployment.nodes if node.url != killed)
    assert killed and seen_at_kill and text.startswith(seen_at_kill) and len(text) > len(seen_at_kill)
    assert (finish, usage.completion_tokens) == ("length", 300)  # one complete answer
    # The survivor served the rest: a session of its own, opened after the kill, and closed with its socket.
    assert deployment.node_health(survivor)["sessions_total"] == before[survivor.url] + 1
    _sessions_closed(deployment, [survivor])
    # Nothing repeated, nothing missing: the first node's greedy part, then the survivor's greedy continuation.
    assert is_one_failover_answer(reference, prompt, full, text, seen_at_kill), (
        f"not one answer: {text!r} is no first-node prefix (at least {seen_at_kill!r}) plus the greedy "
        f"continuation of it; the uninterrupted answer is {full.text!r}"
    )

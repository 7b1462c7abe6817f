"""Shared by the compat tests: model names, the `Gateway` handle the fixtures yield, reference answers.

Reference answers: the devnode's text is deterministic (`openai_proxy.devnode.generate_tokens`), but for chat
the gateway hands Plumise/Petals nodes the prompt rendered with the model's chat template, while an OpenAI-type
node gets the raw `messages` and applies its own template (the devnode joins the message texts with newlines).
The same chat request therefore has two valid answers depending on which node the pool picks at random.
`agreeing_messages` finds a user message for which both prompts hash to the same starting word, so all three
nodes give the same answer and tests can compare stream and non-stream answers byte for byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from openai_proxy.catalog import load_catalog
from openai_proxy.devnode import generate_tokens
from openai_proxy.settings import Settings
from openai_proxy.templates import ChatMessage, get_template

TIKTOKEN_CACHE_DIR = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"

FREE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
BUILTIN_MODELS = (
    "bigscience/bloom-560m",
    "meta-llama/Llama-3.1-8B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.2",
    "qwen/qwen3-32b",
    "meta-llama/Llama-3.1-70B-Instruct",
    "qwen/qwen3.5-397b-a17b",
)


@dataclass(frozen=True)
class Gateway:
    url: str  # http://127.0.0.1:PORT
    free_key: str
    pro_key: str
    free_wallet: str
    pro_wallet: str
    node_urls: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any gateway setting (no stray NODE_URLS, REDIS_URL, ...)."""
    gateway_vars = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in gateway_vars}
    for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        env.pop(key, None)
    env["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


# --- reference answers ---------------------------------------------------------------------------------------


def reference(prompt: str, max_tokens: int) -> str:
    """The devnode's answer to a raw prompt (what /v1/completions must return at any node)."""
    return "".join(generate_tokens(prompt, max_tokens))


def chat_prompts(model: str, messages: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt a Plumise/Petals node gets: the gateway's template, prompt the OpenAI-type devnode builds)."""
    spec = load_catalog(None).get(model)
    assert spec is not None, model
    turns = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
    templated = get_template(spec.template).render(turns)
    devnode_openai = "\n".join(m["content"] for m in messages) + "\n"
    return templated, devnode_openai


def chat_references(model: str, messages: list[dict[str, str]], max_tokens: int) -> set[str]:
    """Every answer a node of the fixture gateway may give to this chat request."""
    return {reference(prompt, max_tokens) for prompt in chat_prompts(model, messages)}


@cache
def agreeing_messages(model: str = FREE_MODEL, stem: str = "Tell me a story") -> tuple[dict[str, str], ...]:
    """A one-message conversation that every node of the fixture gateway answers identically."""
    for k in range(10_000):
        messages = [{"role": "user", "content": f"{stem} #{k}"}]
        if len(chat_references(model, messages, 3)) == 1:
            return tuple(messages)
    raise AssertionError("no agreeing prompt found")  # ~1/97 of candidates agree; unreachable in practice


def chat_reference(model: str, messages: list[dict[str, str]], max_tokens: int) -> str:
    (answer,) = chat_references(model, messages, max_tokens)
    return answer

"""Model-aware token counts: a catalogue entry that names a tokenizer.json gets exact prompt counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from openai_proxy.templates import ChatMessage, get_template
from openai_proxy.tokens import TokenCounter, TokenizerFileCounter, TokenizerUnavailable, tokenizer_counter

from ..conftest import PRO_WALLET

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


def make_tokenizer(folder: Path) -> Path:
    """A small byte-level BPE, as Llama-family models ship them (tokenizer.json)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False)
    tokenizer.train_from_iterator(["Hello there! How are you today?", "### USER:\n### ASSISTANT:\n"] * 4, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_a_tokenizer_file_or_its_folder_counts_with_that_tokenizer(tmp_path: Path) -> None:
    path = make_tokenizer(tmp_path / "model")
    reference = Tokenizer.from_file(str(path))
    for named in (str(path), str(path.parent)):
        counter = tokenizer_counter(named)
        assert isinstance(counter, TokenizerFileCounter)
        assert counter.count("Hello there") == len(reference.encode("Hello there", add_special_tokens=False).ids)
        assert counter.count("<s>") == 1  # a special token's text is that one token


def test_a_tiktoken_name_still_means_tiktoken() -> None:
    counter = tokenizer_counter("cl100k_base")
    assert isinstance(counter, TokenCounter) and counter.count("hello world") == 2


@pytest.mark.parametrize("named", ["/nonexistent/tokenizer.json", "some/hub-model", "no-such-encoding"])
def test_a_tokenizer_that_is_not_there_is_a_startup_error(named: str) -> None:
    with pytest.raises(TokenizerUnavailable):
        tokenizer_counter(named)


def test_a_broken_tokenizer_file_is_a_startup_error(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerUnavailable, match="cannot read the tokenizer file"):
        tokenizer_counter(str(broken))


async def test_usage_counts_the_prompt_with_the_models_own_tokenizer(  # type: ignore[no-untyped-def]
    tmp_path: Path, start_devnode, start_gateway, http
) -> None:
    path = make_tokenizer(tmp_path / "tiny")
    entry = {"template": "plain", "context_length": 4096, "tier": "free", "max_output_tokens": 64, "created": 0}
    catalogue = tmp_path / "models.json"
    catalogue.write_text(json.dumps({"models": [
        {"id": "tiny/own-tokenizer", "tokenizer": str(path), **entry}, {"id": "tiny/estimated", **entry},
    ]}))
    node = await start_devnode()
    gateway = await start_gateway([f"petals+ws://{node.hostport}"], models_file=str(catalogue))
    prompt = get_template("plain").render([ChatMessage(m["role"], m["content"]) for m in HELLO])
    exact = len(Tokenizer.from_file(str(path)).encode(prompt, add_special_tokens=False).ids)
    estimate = TokenCounter().count(prompt)
    assert exact != estimate
    for model, expected in (("tiny/own-tokenizer", exact), ("tiny/estimated", estimate)):
        response = await http.post(f"{gateway.v1}/chat/completions", headers=gateway.headers(PRO_WALLET),
                                   json={"model": model, "messages": HELLO, "max_tokens": 3})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == expected

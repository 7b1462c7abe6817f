"""Chat templates render the exact prompt formats the model families were trained on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_proxy.templates import TEMPLATE_NAMES, ChatMessage, ChatTemplate, get_template

M = ChatMessage
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# The text that must close every prompt, per template.
CUES = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": " [/INST]",
    "chatml": "<|im_start|>assistant\n",
    "plain": "\n### ASSISTANT:\n",
}


def test_template_names() -> None:
    assert TEMPLATE_NAMES == ("llama3", "mistral", "chatml", "plain")
    assert set(CUES) == set(TEMPLATE_NAMES)


def test_unknown_template_is_a_value_error_listing_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown chat template 'gpt'; known: llama3, mistral, chatml, plain"):
        get_template("gpt")


def test_llama3_exact() -> None:
    prompt = get_template("llama3").render(
        [M("developer", "Be brief."), M("user", " Hi \n"), M("assistant", "Hello!"), M("tool", "42")]
    )
    assert prompt == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n42<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert {"<|eot_id|>", "<|end_of_text|>"} <= set(get_template("llama3").stop_markers)


def test_mistral_exact_multi_turn_with_system() -> None:
    prompt = get_template("mistral").render(
        [M("system", "S"), M("user", "Hi"), M("assistant", "Hello"), M("user", "Again")]
    )
    assert prompt == "<s>[INST] S\n\nHi [/INST]Hello</s>[INST] Again [/INST]"
    assert get_template("mistral").stop_markers == ("</s>", "[INST]")


def test_mistral_merges_consecutive_turns() -> None:
    prompt = get_template("mistral").render(
        [M("user", "a"), M("user", "b"), M("assistant", "c"), M("assistant", "d"), M("tool", "e")]
    )
    assert prompt == "<s>[INST] a\n\nb [/INST]c\n\nd</s>[INST] e [/INST]"


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "<s>[INST]  [/INST]"),
        ([M("system", "S")], "<s>[INST] S [/INST]"),
        ([M("assistant", "Hi")], "<s>[INST]  [/INST]Hi</s>[INST]  [/INST]"),
        ([M("system", "S"), M("assistant", "Hi")], "<s>[INST] S [/INST]Hi</s>[INST]  [/INST]"),
        ([M("user", "Q"), M("assistant", "A")], "<s>[INST] Q [/INST]A</s>[INST]  [/INST]"),
        ([M("user", "Q"), M("system", "S2"), M("user", "R")], "<s>[INST] Q\n\nS2\n\nR [/INST]"),
    ],
)
def test_mistral_degenerate_conversations(messages: list[ChatMessage], expected: str) -> None:
    assert get_template("mistral").render(messages) == expected


def test_chatml_exact() -> None:
    prompt = get_template("chatml").render([M("system", "S"), M("user", "Hi"), M("assistant", "Yo")])
    assert prompt == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nYo<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert set(get_template("chatml").stop_markers) == {"<|im_end|>", "<|endoftext|>", "<|im_start|>"}


def test_chatml_groups_tool_results_into_one_user_turn() -> None:
    prompt = get_template("chatml").render([M("tool", "1"), M("function", "2"), M("user", "ok")])
    assert prompt == (
        "<|im_start|>user\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n"
        "<|im_start|>user\nok<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_plain_matches_the_original_gateway() -> None:
    plain = get_template("plain")
    assert plain.render([M("system", "S"), M("user", "Hi")]) == "### SYSTEM:\nS\n\n### USER:\nHi\n\n### ASSISTANT:\n"
    assert plain.render([]) == "\n### ASSISTANT:\n"
    assert {"\n### USER:", "\n### SYSTEM:", "\n### ASSISTANT:"} <= set(plain.stop_markers)


_messages = st.lists(st.builds(ChatMessage, st.sampled_from(ROLES), st.text(max_size=40)), max_size=8)


def _assert_in_order(prompt: str, contents: list[str]) -> None:
    at = 0
    for content in contents:
        found = prompt.find(content, at)
        assert found != -1, (content, prompt)
        at = found + len(content)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@given(messages=_messages)
def test_any_conversation_renders_with_cue_and_contents_in_order(name: str, messages: list[ChatMessage]) -> None:
    template: ChatTemplate = get_template(name)
    prompt = template.render(messages)
    assert prompt.endswith(CUES[name])
    # llama3 trims content, as Meta's reference template does.
    contents = [m.content.strip() if name == "llama3" else m.content for m in messages]
    _assert_in_order(prompt, contents)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@given(role=st.text(max_size=10), content=st.text(max_size=20))
def test_unknown_roles_do_not_crash(name: str, role: str, content: str) -> None:
    assert get_template(name).render([M(role, content)]).endswith(CUES[name])

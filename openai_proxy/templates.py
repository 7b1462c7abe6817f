"""Chat templates: the exact prompt text each model family was trained on.

Every template renders a whole conversation into one string that ends with the cue for the assistant's
turn, and names the end-of-turn markers the gateway must treat as stop strings (Petals nodes generate raw
text, so a model that "ends its turn" just writes the marker and carries on unless we cut it).

Roles accepted: ``system``, ``developer`` (treated as ``system``), ``user``, ``assistant``, ``tool`` and
``function`` (both treated as tool output). Any other role string is passed through where the format has a
free-form role slot (llama3, chatml, plain) and treated as ``user`` where it has not (mistral).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation, already flattened to text."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """A named prompt format: ``render`` builds the prompt, ``stop_markers`` end the assistant's turn."""

    name: str
    stop_markers: tuple[str, ...]
    renderer: Callable[[Sequence[ChatMessage]], str]

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """Render ``messages``; the result always ends with the assistant cue."""
        return self.renderer(messages)


_TOOL_ROLES = frozenset({"tool", "function"})


def _canonical_role(role: str) -> str:
    """Fold the OpenAI role aliases onto the roles the templates know."""
    if role == "developer":
        return "system"
    if role in _TOOL_ROLES:
        return "tool"
    return role


# --- Llama 3 / 3.1 --------------------------------------------------------------------------------
# Meta's published format. The reference Jinja template trims every message's content, so we do too.
# The Hugging Face 3.1 template also writes a "Cutting Knowledge Date / Today Date" preamble into the
# system turn; we leave it out: it would make the prompt (and its token count) change with the date, the
# template is shared with Llama 3.0, which has no such preamble, and the models answer well without it.


def _llama3_role(role: str) -> str:
    role = _canonical_role(role)
    return "ipython" if role == "tool" else role


def _render_llama3(messages: Sequence[ChatMessage]) -> str:
    parts = ["<|begin_of_text|>"]
    for message in messages:
        role = _llama3_role(message.role)
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{message.content.strip()}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


# --- Mistral 7B Instruct v0.2 ---------------------------------------------------------------------
# The format only has strictly alternating [INST] user / assistant turns and no system slot, so the
# renderer first folds the conversation onto that shape:
# * system/developer text counts as user text, so with the merge below it is prepended (joined by "\n\n")
#   to the user turn it precedes (v0.2's own template rejects system messages; this is the usual
#   workaround), and every message's text stays in conversation order; a system message with no user
#   turn next to it becomes a user turn of its own;
# * tool output and unknown roles also count as user text;
# * consecutive turns of the same side are merged with "\n\n";
# * an assistant turn with no user turn before it (a conversation that opens with the assistant) gets an
#   empty "[INST]  [/INST]" in front, and a conversation that does not end on a user turn (or is empty)
#   gets an empty final user turn, so the prompt always ends with the "[/INST]" cue.


def _mistral_turns(messages: Sequence[ChatMessage]) -> list[tuple[bool, str]]:
    """Fold ``messages`` into alternating ``(is_user, text)`` turns."""
    turns: list[tuple[bool, str]] = []
    for message in messages:
        is_user = message.role != "assistant"
        if turns and turns[-1][0] == is_user:
            turns[-1] = (is_user, f"{turns[-1][1]}\n\n{message.content}")
        else:
            turns.append((is_user, message.content))
    return turns


def _render_mistral(messages: Sequence[ChatMessage]) -> str:
    parts = ["<s>"]
    previous_was_user = False
    for is_user, text in _mistral_turns(messages):
        if is_user:
            parts.append(f"[INST] {text} [/INST]")
        else:
            if not previous_was_user:
                parts.append("[INST]  [/INST]")
            parts.append(f"{text}</s>")
        previous_was_user = is_user
    if not previous_was_user:
        parts.append("[INST]  [/INST]")
    return "".join(parts)


# --- ChatML (Qwen 2.5 / Qwen 3) -------------------------------------------------------------------
# Qwen's published template: tool results are not a role of their own; consecutive tool messages are
# wrapped in <tool_response> blocks inside one user turn. No <think> block is forced (the template's
# default, enable_thinking=True, adds nothing after the cue).


def _render_chatml(messages: Sequence[ChatMessage]) -> str:
    parts: list[str] = []
    in_tool_turn = False
    for message in messages:
        role = _canonical_role(message.role)
        if role == "tool":
            if not in_tool_turn:
                parts.append("<|im_start|>user")
            parts.append(f"\n<tool_response>\n{message.content}\n</tool_response>")
            in_tool_turn = True
            continue
        if in_tool_turn:
            parts.append("<|im_end|>\n")
            in_tool_turn = False
        parts.append(f"<|im_start|>{role}\n{message.content}<|im_end|>\n")
    if in_tool_turn:
        parts.append("<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# --- plain (BLOOM; the original Plumise gateway's format) -----------------------------------------
# "### ROLE:\n{content}\n" blocks joined with "\n", then "\n### ASSISTANT:\n". developer folds to SYSTEM;
# other roles are upper-cased verbatim (so tool output reads "### TOOL:").


def _render_plain(messages: Sequence[ChatMessage]) -> str:
    blocks = [f"### {_canonical_role(m.role).upper()}:\n{m.content}\n" for m in messages]
    return "\n".join(blocks) + "\n### ASSISTANT:\n"


# The plain markers come in two forms. The "\n"-prefixed ones cut the newline that precedes a new turn
# header. The bare ones also catch a header at the very start of the reply (right after the cue there is
# no newline): the answer is then empty, which is honest. The original gateway also cut at "USER:" and
# "\n###"; we do not, because those truncate ordinary answers (markdown headings, quoted dialogue).
_PLAIN_STOPS = (
    "\n### USER:",
    "\n### SYSTEM:",
    "\n### ASSISTANT:",
    "### USER:",
    "### SYSTEM:",
    "### ASSISTANT:",
)

_TEMPLATES = (
    ChatTemplate("llama3", ("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>"), _render_llama3),
    ChatTemplate("mistral", ("</s>", "[INST]"), _render_mistral),
    ChatTemplate("chatml", ("<|im_end|>", "<|endoftext|>", "<|im_start|>"), _render_chatml),
    ChatTemplate("plain", _PLAIN_STOPS, _render_plain),
)

TEMPLATE_NAMES: tuple[str, ...] = tuple(t.name for t in _TEMPLATES)


def get_template(name: str) -> ChatTemplate:
    """Return the template called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    for template in _TEMPLATES:
        if template.name == name:
            return template
    raise ValueError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")

"""LlamaIndex with the gateway. Use OpenAILike (LlamaIndex's OpenAI class rejects non-OpenAI model names) and
set is_chat_model=True so it calls /v1/chat/completions; also set max_tokens, or completions stop at 16.

    pip install llama-index-llms-openai-like
    export OPENAI_BASE_URL=http://127.0.0.1:3200/v1
    export OPENAI_API_KEY=<JWT>
    python examples/llamaindex_chat.py
"""

from __future__ import annotations

import os

from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:3200/v1")
MODEL = os.environ.get("OPENAI_MODEL", "meta-llama/Llama-3.1-8B-Instruct")


def main() -> None:
    llm = OpenAILike(
        model=MODEL,
        api_base=BASE_URL,
        api_key=os.environ["OPENAI_API_KEY"],
        is_chat_model=True,
        context_window=131072,
        max_tokens=40,
    )
    messages = [ChatMessage(role="user", content="What does a retrieval-augmented pipeline do?")]
    print(llm.chat(messages).message.content)
    for part in llm.stream_chat(messages):
        print(part.delta or "", end="", flush=True)
    print()


if __name__ == "__main__":
    main()

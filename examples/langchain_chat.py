"""LangChain's ChatOpenAI pointed at the gateway: one answer, then the same question streamed.

    pip install langchain-openai
    export OPENAI_BASE_URL=http://127.0.0.1:3200/v1
    export OPENAI_API_KEY=<JWT>
    python examples/langchain_chat.py
"""

from __future__ import annotations

import os

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:3200/v1")
MODEL = os.environ.get("OPENAI_MODEL", "meta-llama/Llama-3.1-8B-Instruct")


def main() -> None:
    llm = ChatOpenAI(
        base_url=BASE_URL,
        api_key=SecretStr(os.environ["OPENAI_API_KEY"]),
        model=MODEL,
        max_tokens=40,  # sent as max_completion_tokens, which the gateway honours
        temperature=0,
    )
    messages = [
        SystemMessage("You are a concise assistant."),
        HumanMessage("Why run a language model across many machines?"),
    ]
    print(llm.invoke(messages).content)
    for chunk in llm.stream(messages):
        print(chunk.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()

"""Chat with the gateway through the official OpenAI SDK (synchronous client).

    export OPENAI_BASE_URL=http://127.0.0.1:3200/v1
    export OPENAI_API_KEY=<JWT from wallet sign-in or `openai-proxy token --address 0x...`>
    python examples/openai_sync.py
"""

from __future__ import annotations

import os

from openai import OpenAI

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:3200/v1")
MODEL = os.environ.get("OPENAI_MODEL", "meta-llama/Llama-3.1-8B-Instruct")


def main() -> None:
    with OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"]) as client:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "What is Petals, in one sentence?"},
            ],
            max_tokens=40,
        )
    print(reply.choices[0].message.content)
    if reply.usage is not None:
        print(f"[{reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens]")


if __name__ == "__main__":
    main()

"""Stream an answer token by token with the OpenAI SDK, and print the usage the gateway reports at the end.

    export OPENAI_BASE_URL=http://127.0.0.1:3200/v1
    export OPENAI_API_KEY=<JWT>
    python examples/openai_streaming.py
"""

from __future__ import annotations

import os

from openai import OpenAI

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:3200/v1")
MODEL = os.environ.get("OPENAI_MODEL", "meta-llama/Llama-3.1-8B-Instruct")


def main() -> None:
    with OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"]) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write a haiku about distributed inference."}],
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},  # one extra chunk with the token counts
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage is not None:
                print(f"\n[{chunk.usage.total_tokens} tokens]")


if __name__ == "__main__":
    main()

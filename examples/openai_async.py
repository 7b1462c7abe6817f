"""Several questions at once with the OpenAI SDK's async client.

    export OPENAI_BASE_URL=http://127.0.0.1:3200/v1
    export OPENAI_API_KEY=<JWT>
    python examples/openai_async.py
"""

from __future__ import annotations

import asyncio
import os

from openai import AsyncOpenAI

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:3200/v1")
MODEL = os.environ.get("OPENAI_MODEL", "meta-llama/Llama-3.1-8B-Instruct")
QUESTIONS = ("Name a prime number.", "Name a colour.", "Name a planet.")


async def ask(client: AsyncOpenAI, question: str) -> str:
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=20
    )
    return reply.choices[0].message.content or ""


async def main() -> None:
    async with AsyncOpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"]) as client:
        answers = await asyncio.gather(*(ask(client, question) for question in QUESTIONS))
    for question, answer in zip(QUESTIONS, answers, strict=True):
        print(f"{question} -> {answer}")


if __name__ == "__main__":
    asyncio.run(main())

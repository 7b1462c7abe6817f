"""Sign in with an Ethereum wallet (SIWE), then use the token as the OpenAI API key.

    export OPENAI_BASE_URL=http://127.0.0.1:3200/v1
    export PLUMISE_PRIVATE_KEY=0x...   # optional: without it a throwaway account is generated
    python examples/wallet_signin.py
"""

from __future__ import annotations

import os

from eth_account import Account
from openai import OpenAI

from openai_proxy.login import sign_in

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:3200/v1")
MODEL = os.environ.get("OPENAI_MODEL", "meta-llama/Llama-3.1-8B-Instruct")


def main() -> None:
    key = os.environ.get("PLUMISE_PRIVATE_KEY")
    account = Account.from_key(key) if key else Account.create()
    token = sign_in(BASE_URL.removesuffix("/").removesuffix("/v1"), account)  # the gateway root
    print(f"signed in as {account.address}")
    with OpenAI(base_url=BASE_URL, api_key=token) as client:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=20
        )
    print(reply.choices[0].message.content)


if __name__ == "__main__":
    main()

"""`petals-node`: the public Petals HTTP/WebSocket API over a real Petals client (upstream-protocols.md §12).

    python -m openai_proxy.petals_node --model <dir or hub name> --initial-peers <multiaddr> [--dht-prefix P]
    openai-proxy petals-node ...                 (the same, from an environment that has the gateway too)

It needs the Petals stack (torch, petals, transformers), which cannot be installed from Petals' own pins:
build its environment with `scripts/install-petals-env.sh <venv>`, then `pip install --no-deps -e .` in it.
Nothing here imports torch, petals or transformers at import time, so the gateway never depends on them:
`engine.py` imports them when the model is loaded.
"""

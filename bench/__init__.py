"""The gateway benchmark: the gateway, a bare passthrough and LiteLLM's proxy side by side (see README.md)."""

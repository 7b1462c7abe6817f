"""openai-proxy: the Plumise inference gateway, an exact OpenAI API over Petals nodes."""

__version__ = "0.1.0"

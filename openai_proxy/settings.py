"""The one configuration object: every environment variable, its default and its meaning.

Names follow the original Plumise Inference API (PORT, JWT_SECRET, NODE_URLS, ...) so an existing `.env`
keeps working; settings the original lacked get plain names of their own. Values come from the process
environment and from `.env` in the working directory. Tests build `Settings(...)` directly.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_PRIVATE_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `24h`, `30m`, `90s`, `1d` or a bare number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 3600, 90s, 30m, 24h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # --- the server -------------------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Address `serve` binds to.")
    port: int = Field(3200, description="Port `serve` listens on.")
    public_url: str | None = Field(
        None, description="The gateway's public origin, used in SIWE messages (default http://localhost:PORT)."
    )
    cors_origins: CommaList = Field(
        ["http://localhost:3000"], description="Comma list of browser origins allowed by CORS."
    )
    max_body_bytes: int = Field(
        50 * 1024 * 1024, description="Largest request body accepted; larger bodies get 413."
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_prompts: bool = Field(False, description="Debug only: include prompt text in logs.")
    shutdown_grace_seconds: float = Field(
        30, ge=0, description="On SIGTERM, how long running requests and streams may take to finish."
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request head (request line and headers); larger ones get 431."
    )
    header_timeout_seconds: float = Field(
        10, gt=0, description="Seconds a client has to send a complete request head; slower ones are cut."
    )
    keep_alive_seconds: float = Field(
        15, gt=0, description="Seconds an idle keep-alive connection stays open (longer than the 5 s client pools "
        "of httpx and the openai SDK keep theirs, so the client closes first; above a load balancer's idle timeout).",
    )
    sse_send_timeout: float = Field(
        30, gt=0, description="Seconds a client may stop reading a response (a stream) before the gateway "
        "drops the connection and cancels its node request.",
    )

    # --- authentication ---------------------------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(None, description="HS256 secret for API tokens. Required by `serve`.")
    jwt_expiration: str = Field("24h", description="Lifetime of issued tokens (e.g. 3600, 30m, 24h).")
    jwt_issuer: str = Field("openai-proxy", description="`iss` claim of issued tokens, checked on verify.")
    jwt_audience: str = Field("openai-proxy", description="`aud` claim of issued tokens, checked on verify.")
    pro_addresses: CommaList = Field([], description="Comma list of wallet addresses that are always pro.")
    api_keys: CommaList = Field(
        [], description="Static service keys for server-to-server use, comma list of `key:tier:label`."
    )
    redis_url: str | None = Field(None, description="Redis URL for state shared across workers and replicas.")
    redis_prefix: str = Field(
        "oaip:", min_length=1, description="Prefix of every Redis key: deployments sharing one Redis differ here."
    )

    # --- tiers ------------------------------------------------------------------------------------------
    free_tier_limit: int = Field(10, ge=0, description="Requests per window for a free wallet.")
    free_tier_window: int = Field(3600, gt=0, description="Length of the free tier's sliding window, seconds.")
    free_tier_max_tokens: int = Field(2048, gt=0, description="Largest max_tokens a free wallet may ask for.")
    pro_tier_max_tokens: int = Field(4096, gt=0, description="Largest max_tokens a pro wallet may ask for.")

    # --- nodes --------------------------------------------------------------------------------------------
    node_urls: CommaList = Field(
        [],
        description="Comma list of node URLs: http:// (Plumise node), petals+http://, petals+ws://, "
        "openai+http://.",
    )
    petals_api_url: str | None = Field(None, description="Single-node mode: one node URL, added to NODE_URLS.")
    models_file: str | None = Field(None, description="JSON or TOML file that replaces the built-in catalogue.")
    node_max_attempts: int = Field(3, ge=1, description="Different nodes tried for one request.")
    node_max_failures: int = Field(3, ge=1, description="Consecutive failures that put a node in cooldown.")
    node_cooldown_seconds: float = Field(30, ge=0, description="How long a failing node sits out.")
    node_connect_timeout: float = Field(5, gt=0, description="Seconds to open a connection to a node.")
    first_token_timeout: float = Field(60, gt=0, description="Seconds a node may take to its first token.")
    token_idle_timeout: float = Field(60, gt=0, description="Seconds a node may pause between tokens.")
    sse_keepalive_seconds: float = Field(15, gt=0, description="Interval of SSE keep-alive comments.")
    health_check_interval: float = Field(10, gt=0, description="Seconds between node health checks.")

    # --- oracle, chain ------------------------------------------------------------------------------------
    oracle_api_url: str | None = Field(None, description="Plumise Oracle base URL for node discovery.")
    oracle_api_key: SecretStr | None = Field(None, description="Oracle API key (x-api-key).")
    oracle_poll_interval: float = Field(30, gt=0, description="Seconds between Oracle polls.")
    usage_report_interval: float = Field(10, gt=0, description="Seconds between usage reports to the Oracle.")
    allow_loopback_nodes: bool = Field(False, description="Accept loopback URLs from the Oracle (tests).")
    allow_private_ips: bool = Field(True, description="Accept private-range URLs from the Oracle.")
    oracle_timeout: float = Field(5, gt=0, description="Seconds one Oracle call (or node URL DNS check) may take.")
    relay_auth_timeout: float = Field(
        10, gt=0, description="Seconds a relay agent has to send its signed auth message (/ws/agent-relay)."
    )
    chain_rpc_url: str = Field("http://localhost:26902", description="Plumise chain JSON-RPC endpoint.")
    chain_ws_url: str = Field("ws://localhost:26912", description="Plumise chain WebSocket endpoint.")
    chain_id: int = Field(41956, description="Plumise chain id (SIWE and EIP-712 messages are bound to it).")
    private_key: SecretStr | None = Field(None, description="Gateway key that signs usage reports.")
    chain_enabled: bool | None = Field(
        None,
        description="Use the InferencePayment contract for pro tiers and credits: true, false, or unset = "
        "on exactly when CHAIN_RPC_URL is set.",
    )
    inference_payment_address: str = Field(
        "0x5bfb4d6feab6e7ec09edb6044dcafd23bc8c20c5", description="InferencePayment contract address."
    )
    gateway_private_key: SecretStr | None = Field(
        None, description="Key of the contract's gateway account; signs useCredits. Unset: usage is not debited."
    )
    tier_cache_seconds: float = Field(300, gt=0, description="Seconds an on-chain tier is fresh before a refresh.")
    chain_rpc_timeout: float = Field(3, gt=0, description="Seconds one chain JSON-RPC call may take.")
    credits_flush_interval: float = Field(10, gt=0, description="Seconds between rounds of useCredits debits.")

    # --- tokens -------------------------------------------------------------------------------------------
    tiktoken_encoding: str = Field("cl100k_base", description="tiktoken encoding used for usage counts.")

    @field_validator("cors_origins", "node_urls", "pro_addresses", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("jwt_expiration")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("inference_payment_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"not an address (0x and 40 hex digits): {value!r}")
        return value

    @field_validator("gateway_private_key")
    @classmethod
    def _check_private_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _PRIVATE_KEY.match(value.get_secret_value()):
            raise ValueError("GATEWAY_PRIVATE_KEY must be 64 hex digits, with or without 0x")
        return value

    @property
    def chain_on(self) -> bool:
        """Whether the chain is used: CHAIN_ENABLED, else whether CHAIN_RPC_URL was given explicitly."""
        if self.chain_enabled is not None:
            return self.chain_enabled
        return "chain_rpc_url" in self.model_fields_set

    @property
    def jwt_lifetime_seconds(self) -> float:
        return parse_duration(self.jwt_expiration)

    @property
    def origin(self) -> str:
        return (self.public_url or f"http://localhost:{self.port}").rstrip("/")

    @property
    def all_node_urls(self) -> list[str]:
        urls = list(self.node_urls)
        if self.petals_api_url and self.petals_api_url not in urls:
            urls.append(self.petals_api_url)
        return urls

    def tier_max_tokens(self, tier: Literal["free", "pro"]) -> int:
        return self.pro_tier_max_tokens if tier == "pro" else self.free_tier_max_tokens

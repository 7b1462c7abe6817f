"""Who is asking: the identity every surface (/v1, /api/v1, Socket.IO) resolves before doing work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tier = Literal["free", "pro"]


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str  # checksummed wallet address, or "key:<label>" for a service key
    tier: Tier
    kind: Literal["wallet", "service_key"] = "wallet"
    token_id: str | None = None  # the JWT's jti, for logout
    expires_at: float | None = None  # the JWT's exp (unix seconds)

    @property
    def short(self) -> str:
        """A shortened subject for logs: enough to correlate, not enough to identify by itself."""
        if self.kind == "wallet" and len(self.subject) == 42:
            return f"{self.subject[:6]}…{self.subject[-4:]}"
        return self.subject

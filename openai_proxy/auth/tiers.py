"""Which tier an address is on. PRO_ADDRESSES decides today; the on-chain payment contract plugs in as
`lookup` (cached, so the hot path never waits on the chain when a cached answer exists)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from .principal import Tier

TierLookup = Callable[[str], Awaitable[Tier | None]]


class TierResolver:
    def __init__(self, pro_addresses: Iterable[str], lookup: TierLookup | None = None) -> None:
        self._pro = {address.lower() for address in pro_addresses}
        self._lookup = lookup

    async def tier(self, address: str) -> Tier:
        if address.lower() in self._pro:
            return "pro"
        if self._lookup is not None and await self._lookup(address) == "pro":
            return "pro"
        return "free"

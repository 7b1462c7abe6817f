"""Counters of what the chain integration did and what went wrong, for logs, tests and a metrics exporter."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ChainStats:
    tier_lookups: int = 0  # answers fetched from the chain
    tier_lookup_failures: int = 0  # RPC down, slow or wrong: the last known tier (or free) was used
    tier_fallback_free: int = 0  # requests answered "free" because no tier was known and the chain failed
    debit_tokens_recorded: int = 0  # tokens added to pending debits
    debit_tokens_confirmed: int = 0  # tokens in useCredits transactions mined successfully
    debit_transactions_sent: int = 0  # transactions accepted by the node (replacements included)
    debit_send_failures: int = 0  # transactions the node refused (nonce, fees, funds): retried
    debit_estimate_failures: int = 0  # useCredits would revert (eth_estimateGas failed): retried later
    debit_reverted: int = 0  # mined but reverted: the tokens went back to pending
    debit_dropped_tokens: int = 0  # tokens given up on (bookkeeping found inconsistent): never sent twice
    nonce_resets: int = 0  # the cached nonce was discarded and read again from the chain

    def snapshot(self) -> dict[str, int]:
        return asdict(self)

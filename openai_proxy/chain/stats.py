"""Counters of what the chain integration did and what went wrong, for logs, tests and GET /metrics.

Every field is a monotonically increasing count; metrics.py exports each one as the Prometheus counter
`openai_proxy_chain_<field>_total`, with the help text in HELP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class ChainStats:
    rpc_failures: int = 0  # JSON-RPC calls that got no usable answer (node down, timeout, garbage)
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
    debit_round_failures: int = 0  # credit sender rounds cut short by the chain or the store: retried
    nonce_resets: int = 0  # the cached nonce was discarded and read again from the chain

    def snapshot(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


HELP = {
    "rpc_failures": "Chain JSON-RPC calls that got no usable answer (node down, timeout, garbage).",
    "tier_lookups": "Tiers read from the InferencePayment contract.",
    "tier_lookup_failures": "Tier reads that failed; the last known tier, else free, was used.",
    "tier_fallback_free": "Requests answered as free because no tier was known and the chain did not answer.",
    "debit_tokens_recorded": "Tokens of pro requests added to pending on-chain debits.",
    "debit_tokens_confirmed": "Tokens debited by useCredits transactions that mined successfully.",
    "debit_transactions_sent": "useCredits transactions accepted by the chain node (fee bumps included).",
    "debit_send_failures": "useCredits transactions the chain node refused (nonce, fees, funds); retried.",
    "debit_estimate_failures": "useCredits debits that would revert (gas estimation failed); retried later.",
    "debit_reverted": "useCredits transactions mined but reverted; their tokens went back to pending.",
    "debit_dropped_tokens": "Tokens given up on because their bookkeeping was lost (never sent twice).",
    "debit_round_failures": "Credit sender rounds cut short by an unreachable chain or state store; retried.",
    "nonce_resets": "Times the gateway's cached nonce was discarded and read again from the chain.",
}

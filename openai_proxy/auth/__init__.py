"""Wallet sign-in: signature recovery (`wallet`) and the EIP-4361 message format (`siwe`).

Everything here is pure: no I/O, no globals, and the clock is always a parameter.
"""

from __future__ import annotations

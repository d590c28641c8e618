"""Revocation: one protocol, an in-process cache read on the hot path, and durable stores.

Every store keeps a `RevocationCache` (plain dicts) that the hot path reads without any I/O;
the store's job is to make a revocation durable (and shared) before `revoke_*` returns,
and to keep the cache in step with what other processes revoked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """What `/readyz` reports for the revocation store."""

    ready: bool
    detail: str


class RevocationCache:
    """In-process revocation state: `jti -> expires_at` and `subject -> (cutoff, expires_at)`.

    Plain dicts rather than a cachetools TLRUCache: a million 22-character ids cost about
    half the memory and fill many times faster, and nothing may ever be evicted early
    (an evicted revocation is a revoked token accepted again). Expired entries are
    dropped by `purge`, which the owning store calls periodically.
    """

    __slots__ = ("_cutoffs", "_expiries", "_tokens")

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}
        self._cutoffs: dict[str, tuple[float, float]] = {}
        # One float object per whole second, shared by every entry expiring in it: a
        # million entries then hold a few thousand floats instead of a million (~24 MB).
        self._expiries: dict[int, float] = {}

    def add_token(self, jti: str, expires_at: float) -> None:
        """Record a revoked token id until `expires_at` (the token's exp + leeway).

        Kept until the next whole second: a little longer, never shorter.
        """
        second = math.ceil(expires_at)
        shared = self._expiries.get(second)
        if shared is None:
            shared = self._expiries[second] = float(second)
        if shared > self._tokens.get(jti, 0.0):
            self._tokens[jti] = shared

    def add_cutoff(self, subject: str, cutoff: float, expires_at: float) -> None:
        """Reject every token of `subject` issued at or before `cutoff` (logout_all)."""
        old_cutoff, old_expiry = self._cutoffs.get(subject, (0.0, 0.0))
        self._cutoffs[subject] = (max(cutoff, old_cutoff), max(expires_at, old_expiry))

    def has_token(self, jti: str) -> bool:
        return jti in self._tokens

    def has_subject(self, subject: str) -> bool:
        return subject in self._cutoffs

    def is_revoked(self, jti: str, subject: str, issued_at: float) -> bool:
        """True when the token id was revoked or its subject logged out all after issue."""
        if jti in self._tokens:
            return True
        cutoff = self._cutoffs.get(subject)
        return cutoff is not None and issued_at <= cutoff[0]

    def purge(self, now: float) -> int:
        """Drop entries whose tokens can no longer verify anyway; returns how many went."""
        expired = [jti for jti, exp in self._tokens.items() if exp <= now]
        for jti in expired:
            del self._tokens[jti]
        for second in [second for second in self._expiries if second <= now]:
            del self._expiries[second]
        gone = [sub for sub, (_, exp) in self._cutoffs.items() if exp <= now]
        for sub in gone:
            del self._cutoffs[sub]
        return len(expired) + len(gone)

    def __len__(self) -> int:
        return len(self._tokens) + len(self._cutoffs)


class RevocationStore(Protocol):
    """Where revocations live. `revoke_*` return only once the write is durable/shared.

    `is_revoked` runs on every proxied request: it reads only the in-process cache and
    never waits on disk or network. It raises `StoreUnavailableError` when the cache can
    no longer be trusted (cut off from a shared store longer than `max_staleness`): the
    gateway then fails closed.
    """

    async def start(self) -> None:
        """Open the store and load every live revocation; ready once this returns."""

    async def close(self) -> None:
        """Release connections and background tasks."""

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        """Durably revoke one token id until `expires_at`; StoreUnavailableError if not."""

    async def revoke_subject(self, subject: str, cutoff: float, expires_at: float) -> None:
        """Durably revoke every token of `subject` issued at or before `cutoff`."""

    def is_revoked(self, jti: str, subject: str, issued_at: float) -> bool:
        """Hot path: in-process check only."""

    def status(self) -> StoreStatus:
        """Readiness of the store for `/readyz`."""

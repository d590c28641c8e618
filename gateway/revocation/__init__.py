"""Revocation: one protocol, an in-process cache read on the hot path, and durable stores.

Every store keeps a `RevocationCache` (plain dicts) that the hot path reads without any I/O;
the store's job is to make a revocation durable (and shared) before `revoke_*` returns,
and to keep the cache in step with what other processes revoked.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """What `/readyz` reports for the revocation store."""

    ready: bool
    detail: str


# Seconds of expiry per purge bucket: few enough buckets that each holds many ids (a list
# per second would cost ~19 bytes per entry; one per minute ~9), small enough that a purge
# walks little beyond what expired.
_BUCKET_SECONDS = 60


class RevocationCache:
    """In-process revocation state: `jti -> expires_at` and `subject -> (cutoff, expires_at)`.

    Plain dicts rather than a cachetools TLRUCache: a million 22-character ids cost about
    half the memory and fill many times faster, and nothing may ever be evicted early
    (an evicted revocation is a revoked token accepted again). Expired entries are
    dropped by `purge`, which the owning store calls periodically.
    """

    __slots__ = ("_buckets", "_cutoffs", "_expiries", "_tokens", "_upcoming")

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}
        self._cutoffs: dict[str, tuple[float, float]] = {}
        # One float object per whole second, shared by every entry expiring in it: a
        # million entries then hold a few thousand floats instead of a million (~24 MB).
        self._expiries: dict[int, float] = {}
        # The ids by minute of expiry, so that `purge` visits what expired, not every
        # entry (walking a million took ~90 ms on the event loop). Every second in
        # `_expiries` has its bucket here; `_upcoming` is a heap of the bucket numbers.
        self._buckets: dict[int, list[str]] = {}
        self._upcoming: list[int] = []

    def add_token(self, jti: str, expires_at: float) -> None:
        """Record a revoked token id until `expires_at` (the token's exp + leeway).

        Kept until the next whole second: a little longer, never shorter.
        """
        second = math.ceil(expires_at)
        shared = self._expiries.get(second)
        if shared is None:
            shared = self._expiries[second] = float(second)
            if second // _BUCKET_SECONDS not in self._buckets:
                self._buckets[second // _BUCKET_SECONDS] = []
                heapq.heappush(self._upcoming, second // _BUCKET_SECONDS)
        if shared > self._tokens.get(jti, 0.0):
            self._tokens[jti] = shared
            self._buckets[second // _BUCKET_SECONDS].append(jti)

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
        """Drop entries whose tokens can no longer verify anyway; returns how many went.

        Visits only the buckets whose minute has begun: a million live entries cost
        nothing here.
        """
        before = len(self._tokens)
        while self._upcoming and self._upcoming[0] * _BUCKET_SECONDS <= now:
            bucket = self._upcoming[0]
            live = self._drop_expired(self._buckets[bucket], now)
            first, last = bucket * _BUCKET_SECONDS, (bucket + 1) * _BUCKET_SECONDS - 1
            if last > now:  # the minute is still running: keep its live ids for later
                self._buckets[bucket] = live
                break
            heapq.heappop(self._upcoming)
            del self._buckets[bucket]
            for second in range(first, last + 1):
                self._expiries.pop(second, None)
        gone = [sub for sub, (_, exp) in self._cutoffs.items() if exp <= now]
        for sub in gone:
            del self._cutoffs[sub]
        return before - len(self._tokens) + len(gone)

    def _drop_expired(self, ids: list[str], now: float) -> list[str]:
        """Delete the expired entries of `ids`; returns the ids still held."""
        tokens, live = self._tokens, []
        for jti in ids:
            expires_at = tokens.get(jti)
            if expires_at is None:
                continue  # dropped already (listed twice)
            if expires_at <= now:
                del tokens[jti]
            else:
                live.append(jti)  # not yet, or revoked again until later
        return live

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

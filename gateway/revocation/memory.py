"""In-process revocation store for tests and demos: nothing survives a restart.

Bounded: when full of live revocations it refuses new ones (503) rather than evict one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.clock import Clock
from gateway.errors import StoreUnavailableError
from gateway.revocation import RevocationCache, StoreStatus

logger = logging.getLogger(__name__)


class MemoryRevocationStore:
    """A `RevocationStore` held only in this process's memory.

    Not durable and not shared between workers: a restart forgets every logout. Meant
    for tests and throwaway demos; production uses the sqlite or redis store.
    """

    def __init__(self, *, clock: Clock, max_entries: int, purge_interval: float = 60.0) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if purge_interval <= 0:
            raise ValueError(f"purge_interval must be positive, got {purge_interval}")
        self.cache = RevocationCache()
        self._clock = clock
        self._max_entries = max_entries
        self._purge_interval = purge_interval
        self._purge_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the periodic purge; the store is usable before and after."""
        if self._purge_task is None:
            self._purge_task = asyncio.create_task(self._purge_loop(), name="revocation-purge")

    async def close(self) -> None:
        """Stop the purge task. The revocations themselves are simply forgotten."""
        task, self._purge_task = self._purge_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        """Revoke one token id until `expires_at`; StoreUnavailableError when full."""
        if not self.cache.has_token(jti):
            self._make_room()
        self.cache.add_token(jti, expires_at)

    async def revoke_subject(self, subject: str, cutoff: float, expires_at: float) -> None:
        """Revoke every token of `subject` issued up to `cutoff`; StoreUnavailableError if full."""
        if not self._has_subject(subject):
            self._make_room()
        self.cache.add_cutoff(subject, cutoff, expires_at)

    def is_revoked(self, jti: str, subject: str, issued_at: float) -> bool:
        """Hot path: a dict lookup, no I/O."""
        return self.cache.is_revoked(jti, subject, issued_at)

    def status(self) -> StoreStatus:
        """Always ready: there is nothing to be cut off from."""
        return StoreStatus(ready=True, detail="memory")

    def purge_expired(self) -> int:
        """Drop revocations of tokens that have expired anyway; returns how many went."""
        removed = self.cache.purge(self._clock())
        if removed:
            logger.debug("revocation_purge removed=%d remaining=%d", removed, len(self.cache))
        return removed

    def _make_room(self) -> None:
        """Ensure one more entry fits, purging first; refuse rather than evict a live one."""
        if len(self.cache) < self._max_entries:
            return
        self.purge_expired()
        if len(self.cache) >= self._max_entries:
            logger.warning("revocation_store_full max_entries=%d", self._max_entries)
            raise StoreUnavailableError("revocation store is full")

    def _has_subject(self, subject: str) -> bool:
        """True when `subject` already has a cutoff, so updating it needs no new entry."""
        return self.cache.has_subject(subject)

    async def _purge_loop(self) -> None:
        """Purge every `purge_interval`; log and carry on after any failure."""
        while True:
            await asyncio.sleep(self._purge_interval)
            try:
                self.purge_expired()
            except Exception:
                logger.exception("revocation_purge_failed store=memory")

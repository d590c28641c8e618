"""Default revocation store: one SQLite file (WAL) that every worker on the host shares.

The table doubles as a change feed ordered by `seq`; each process follows it into its cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from gateway.clock import Clock
from gateway.errors import StoreUnavailableError
from gateway.revocation import RevocationCache, StoreStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[int, str, str, float | None, float]
"""One `revocations` row: seq, kind, key, cutoff, expires_at."""

# AUTOINCREMENT: a seq is never reused, even after the newest rows were purged, so a
# follower's `seq > last_seq` can never skip a row.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('token', 'subject')),
        key TEXT NOT NULL,
        cutoff REAL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS revocations_expires_at ON revocations (expires_at)",
    "CREATE INDEX IF NOT EXISTS revocations_kind_key ON revocations (kind, key)",
)


class StoreOpenError(RuntimeError):
    """The revocation database could not be opened or initialised at start-up."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot open revocation database {path}: {reason}")
        self.path = path


class SqliteRevocationStore:
    """A `RevocationStore` on one SQLite file, durable across restarts and kill -9.

    Every sqlite call runs on one dedicated thread: the event loop never waits on disk,
    and that single thread serialises this process's writes. Other processes on the same
    file are seen by polling the change feed every `sync_interval`.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        sync_interval: float = 0.1,
        purge_interval: float = 60.0,
        busy_timeout: float = 5.0,
        max_staleness: float | None = None,
    ) -> None:
        """`busy_timeout`: seconds to wait for another writer's lock before failing.

        `max_staleness`: when set, `is_revoked` fails closed once no poll of the change
        feed has succeeded for that many seconds.
        """
        self.path = Path(path)
        self.cache = RevocationCache()
        self._clock = clock
        self._sync_interval = sync_interval
        self._purge_interval = purge_interval
        self._busy_timeout = busy_timeout
        self._max_staleness = max_staleness
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor thread
        self._tasks: list[asyncio.Task[None]] = []
        self._last_seq = 0
        self._last_sync = float("-inf")
        self._status = StoreStatus(ready=False, detail="not started")

    async def start(self) -> None:
        """Open (creating if needed) the database, load live rows, start following.

        Raises `StoreOpenError`, naming the path, when the file cannot be used.
        """
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="revocation-db")
        now = self._clock()
        try:
            last_seq = await self._run(partial(self._open_and_load, now))
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            self._status = StoreStatus(ready=False, detail=f"open failed: {exc}")
            logger.error("revocation_store_open_failed path=%s error=%s", self.path, exc)
            raise StoreOpenError(self.path, str(exc)) from exc
        self._last_seq = last_seq
        self._mark_synced()
        logger.info(
            "revocation_store_opened path=%s live=%d last_seq=%d",
            self.path,
            len(self.cache),
            last_seq,
        )
        self._tasks = [
            asyncio.create_task(self._follow_loop(), name="revocation-follow"),
            asyncio.create_task(self._purge_loop(), name="revocation-purge"),
        ]

    async def close(self) -> None:
        """Stop the background tasks, close the connection on its thread, end the thread."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._status = StoreStatus(ready=False, detail="closed")
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        finally:
            # Nothing is queued any more, so this join is immediate.
            executor.shutdown(wait=True)

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        """Durably revoke one token id; StoreUnavailableError unless the row was committed."""
        if self.cache.has_token(jti):
            return  # cache entries were loaded from, or added after a commit to, the db
        await self._insert("token", jti, None, expires_at)
        self.cache.add_token(jti, expires_at)

    async def revoke_subject(self, subject: str, cutoff: float, expires_at: float) -> None:
        """Durably revoke every token of `subject` issued at or before `cutoff`."""
        await self._insert("subject", subject, cutoff, expires_at)
        self.cache.add_cutoff(subject, cutoff, expires_at)

    def is_revoked(self, jti: str, subject: str, issued_at: float) -> bool:
        """Hot path: reads the in-process cache only; fails closed when it went stale.

        A hit is always a hit; only a miss needs the cache to be fresh.
        """
        if self.cache.is_revoked(jti, subject, issued_at):
            return True
        if self._max_staleness is not None:
            self._check_fresh(self._max_staleness)
        return False

    def status(self) -> StoreStatus:
        """Ready after `start` for as long as the latest poll of the change feed succeeded."""
        return self._status

    async def sync(self) -> int:
        """Apply rows committed (by any process) since the last poll; returns how many."""
        try:
            rows = await self._run(partial(self._read_since, self._last_seq))
        except Exception as exc:
            self._status = StoreStatus(ready=False, detail=f"sync failed: {exc}")
            raise
        if rows:
            self._last_seq = max(self._last_seq, rows[-1][0])
        self._apply(rows, self._clock())
        self._mark_synced()
        return len(rows)

    async def purge_expired(self) -> int:
        """Delete rows (and cache entries) of tokens that expired anyway; returns rows deleted."""
        now = self._clock()
        deleted = await self._run(partial(self._delete_expired, now))
        dropped = self.cache.purge(now)
        if deleted or dropped:
            logger.info("revocation_purge rows=%d cache_entries=%d", deleted, dropped)
        return deleted

    # -- event-loop side helpers ------------------------------------------------------

    async def _run(self, job: Callable[[], T]) -> T:
        """Run one sqlite job on the store's own thread."""
        if self._executor is None:
            raise StoreUnavailableError("revocation store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def _insert(self, kind: str, key: str, cutoff: float | None, expires_at: float) -> None:
        """Insert and commit one row, or raise StoreUnavailableError: never claim a lost write."""
        try:
            await self._run(partial(self._insert_row, kind, key, cutoff, expires_at))
        except sqlite3.Error as exc:
            logger.error("revocation_write_failed kind=%s key=%s error=%s", kind, key, exc)
            raise StoreUnavailableError("revocation store write failed") from exc
        logger.debug("revocation_stored kind=%s key=%s", kind, key)

    def _apply(self, rows: Iterable[Row], now: float) -> None:
        """Copy still-live rows into the cache (idempotent: re-applying a row is harmless)."""
        for seq, kind, key, cutoff, expires_at in rows:
            if expires_at <= now:
                continue
            if kind == "token":
                self.cache.add_token(key, expires_at)
            elif cutoff is not None:
                self.cache.add_cutoff(key, cutoff, expires_at)
            else:
                logger.warning("revocation_row_skipped seq=%d reason=subject_without_cutoff", seq)

    def _mark_synced(self) -> None:
        self._last_sync = self._clock()
        self._status = StoreStatus(ready=True, detail="sqlite")

    def _check_fresh(self, max_staleness: float) -> None:
        """Raise StoreUnavailableError when the cache missed the feed for too long."""
        if self._clock() - self._last_sync > max_staleness:
            raise StoreUnavailableError("revocation cache is stale")

    async def _follow_loop(self) -> None:
        """Poll the change feed forever; log the first failure and the recovery."""
        failing = False
        while True:
            await asyncio.sleep(self._sync_interval)
            try:
                await self.sync()
            except Exception:
                if not failing:
                    logger.exception("revocation_sync_failed path=%s", self.path)
                failing = True
            else:
                if failing:
                    logger.info("revocation_sync_recovered path=%s", self.path)
                failing = False

    async def _purge_loop(self) -> None:
        """Purge every `purge_interval`; log and carry on after any failure."""
        while True:
            await asyncio.sleep(self._purge_interval)
            try:
                await self.purge_expired()
            except Exception:
                logger.exception("revocation_purge_failed path=%s", self.path)

    # -- executor-thread side: the only code that touches the connection --------------

    def _open_and_load(self, now: float) -> int:
        """Open the db and load every live row up to the current end of the feed.

        Rows are applied straight from the cursor (the cache is not shared before start()
        returns): a fetchall() of a million rows would double the start-up memory.
        """
        self._conn = _connect(self.path, self._busy_timeout)
        (last_seq,) = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM revocations").fetchone()
        # Rows after last_seq are left to the follower, so none is read twice or missed.
        self._apply(self._conn.execute(
            "SELECT seq, kind, key, cutoff, expires_at FROM revocations"
            " WHERE expires_at > ? AND seq <= ? ORDER BY seq",
            (now, last_seq),
        ), now)
        return int(last_seq)

    def _read_since(self, last_seq: int) -> list[Row]:
        rows: list[Row] = (
            self._connection()
            .execute(
                "SELECT seq, kind, key, cutoff, expires_at FROM revocations"
                " WHERE seq > ? ORDER BY seq",
                (last_seq,),
            )
            .fetchall()
        )
        return rows

    def _insert_row(self, kind: str, key: str, cutoff: float | None, expires_at: float) -> None:
        conn = self._connection()
        try:
            conn.execute(
                "INSERT INTO revocations (kind, key, cutoff, expires_at) VALUES (?, ?, ?, ?)",
                (kind, key, cutoff, expires_at),
            )
            conn.commit()
        except sqlite3.Error:
            _rollback_quietly(conn)
            raise

    def _delete_expired(self, now: float) -> int:
        conn = self._connection()
        try:
            deleted = conn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
            conn.commit()
        except sqlite3.Error:
            _rollback_quietly(conn)
            raise
        return deleted.rowcount

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("revocation database is not open")
        return self._conn


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Create the private directory and file if missing, connect, configure, add the schema."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Create the file ourselves so it is never world-readable; SQLite gives the -wal and
    # -shm files the same permissions as the database file.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, timeout=busy_timeout)
    try:
        _configure(conn, busy_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """WAL so readers never block the writer; FULL so a returned commit survives power loss."""
    (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    if str(mode).lower() != "wal":
        logger.warning("revocation_store_not_wal journal_mode=%s", mode)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.commit()


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    """Leave no half-open transaction behind a failed write; the original error matters."""
    try:
        conn.rollback()
    except sqlite3.Error as exc:
        logger.warning("revocation_rollback_failed error=%s", exc)

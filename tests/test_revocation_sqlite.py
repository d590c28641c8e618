"""SqliteRevocationStore on real files: kill -9, the file, start-up and write failures, the feed.

What every store promises is in test_revocation_store_contract.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from gateway.errors import StoreUnavailableError
from gateway.revocation.sqlite import SqliteRevocationStore, StoreOpenError
from tests.conftest import wait_until
from tests.fakes import FakeClock

HOUR = 3600.0
REPO_ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("sqlite_revoke_then_hang.py")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "revocations.db"


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteRevocationStore]:
    sqlite_store = SqliteRevocationStore(db_path, clock=clock, sync_interval=0.01)
    await sqlite_store.start()
    yield sqlite_store
    await sqlite_store.close()


async def open_store(path: Path, clock: FakeClock, **options: float) -> SqliteRevocationStore:
    """A started store; the caller closes it."""
    sqlite_store = SqliteRevocationStore(path, clock=clock, **options)
    await sqlite_store.start()
    return sqlite_store


def count_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM revocations").fetchone()
    return int(count)


async def test_revocation_survives_kill_9(db_path: Path) -> None:
    """Once revoke_token returned, the revocation is on disk even if the process is SIGKILLed."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPER), str(db_path), "jti-killed",
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30.0)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), timeout=10.0)
    assert line == b"revoked jti-killed\n"
    assert proc.returncode == -signal.SIGKILL
    reopened = await open_store(db_path, FakeClock())
    try:
        assert reopened.is_revoked("jti-killed", "marco", 0.0)
    finally:
        await reopened.close()


async def test_expired_rows_are_not_loaded_at_start(db_path: Path, clock: FakeClock) -> None:
    """At start only rows whose tokens are still live enter the cache."""
    first = await open_store(db_path, clock)
    await first.revoke_token("short", clock() + 10.0)
    await first.revoke_subject("short-user", clock(), clock() + 10.0)
    await first.revoke_token("long", clock() + HOUR)
    await first.close()
    clock.advance(11.0)
    reopened = await open_store(db_path, clock)
    try:
        assert len(reopened.cache) == 1
        assert reopened.is_revoked("long", "x", clock())
        assert not reopened.is_revoked("short", "x", clock())
        assert not reopened.is_revoked("jti", "short-user", clock() - 20.0)
    finally:
        await reopened.close()


@pytest.mark.parametrize("background", [False, True], ids=["purge_expired", "background-task"])
async def test_purge_deletes_expired_rows_from_the_file(
    db_path: Path, clock: FakeClock, background: bool
) -> None:
    """Purging removes the rows of expired tokens from the database, not only the cache."""
    sqlite_store = await open_store(db_path, clock, purge_interval=0.01 if background else HOUR)
    try:
        await sqlite_store.revoke_token("short", clock() + 10.0)
        await sqlite_store.revoke_subject("short-user", clock(), clock() + 10.0)
        await sqlite_store.revoke_token("long", clock() + HOUR)
        clock.advance(11.0)
        if not background:
            await sqlite_store.purge_expired()
        await wait_until(lambda: count_rows(db_path) == 1, 2.0, "expired rows deleted")
    finally:
        await sqlite_store.close()


async def test_files_are_private(store: SqliteRevocationStore, db_path: Path) -> None:
    """The directory is created 0700 and the database (and its WAL) are not world-readable."""
    await store.revoke_token("jti", 1e12)
    assert stat.S_IMODE(db_path.parent.stat().st_mode) & 0o077 == 0
    for path in (db_path, db_path.with_name(db_path.name + "-wal")):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


async def test_database_uses_wal_and_the_fixed_schema(
    store: SqliteRevocationStore, db_path: Path
) -> None:
    """The file is in WAL mode and holds the revocations table with its two indexes."""
    with closing(sqlite3.connect(db_path)) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(revocations)")}
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO revocations (kind, key, expires_at) VALUES ('bogus', 'k', 1.0)"
            )
    assert mode == "wal"
    assert {"revocations_expires_at", "revocations_kind_key"} <= indexes


async def test_start_fails_naming_the_path_when_parent_is_a_file(tmp_path: Path) -> None:
    """A path that cannot be created (its parent is a regular file) fails start clearly."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    path = blocker / "revocations.db"
    sqlite_store = SqliteRevocationStore(path, clock=FakeClock())
    with pytest.raises(StoreOpenError, match=re.escape(str(path))):
        await sqlite_store.start()
    assert not sqlite_store.status().ready


async def test_start_fails_naming_the_path_when_file_is_corrupt(tmp_path: Path) -> None:
    """A file that is not a SQLite database fails start with the path in the message."""
    path = tmp_path / "revocations.db"
    path.write_bytes(b"this is not a database" * 100)
    sqlite_store = SqliteRevocationStore(path, clock=FakeClock())
    with pytest.raises(StoreOpenError, match=re.escape(str(path))):
        await sqlite_store.start()


async def test_write_refused_under_another_writers_lock_is_logged_and_leaves_no_row(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that cannot commit is logged with its key and leaves no row; the retry adds one."""
    sqlite_store = await open_store(db_path, clock, busy_timeout=0.05)
    try:
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other_worker:
            other_worker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailableError):
                await sqlite_store.revoke_token("jti-locked", clock() + HOUR)
            with pytest.raises(StoreUnavailableError):
                await sqlite_store.revoke_subject("marco", clock(), clock() + HOUR)
            other_worker.execute("ROLLBACK")
        assert "revocation_write_failed kind=token key=jti-locked" in caplog.text
        assert count_rows(db_path) == 0
        await sqlite_store.revoke_token("jti-locked", clock() + HOUR)
        assert count_rows(db_path) == 1
    finally:
        await sqlite_store.close()


async def test_revoke_before_start_or_after_close_is_unavailable(
    db_path: Path, clock: FakeClock
) -> None:
    """A store that is not open never reports a revocation as stored."""
    sqlite_store = SqliteRevocationStore(db_path, clock=clock)
    with pytest.raises(StoreUnavailableError):
        await sqlite_store.revoke_token("jti", clock() + HOUR)
    await sqlite_store.start()
    await sqlite_store.close()
    with pytest.raises(StoreUnavailableError):
        await sqlite_store.revoke_subject("marco", clock(), clock() + HOUR)


async def test_status_follows_the_change_feed(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Not ready before start; ready after; not ready while polls fail; ready once they work."""
    caplog.set_level(logging.INFO, logger="gateway.revocation.sqlite")
    sqlite_store = SqliteRevocationStore(db_path, clock=clock, sync_interval=0.01)
    assert not sqlite_store.status().ready
    await sqlite_store.start()
    try:
        assert sqlite_store.status().ready
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("ALTER TABLE revocations RENAME TO revocations_away")
            await wait_until(lambda: not sqlite_store.status().ready, 2.0, "sync failure seen")
            assert "sync failed" in sqlite_store.status().detail
            conn.execute("ALTER TABLE revocations_away RENAME TO revocations")
        await wait_until(lambda: sqlite_store.status().ready, 2.0, "sync recovered")
    finally:
        await sqlite_store.close()
    assert not sqlite_store.status().ready
    assert "revocation_sync_failed" in caplog.text
    assert "revocation_sync_recovered" in caplog.text


async def test_stale_cache_fails_closed(db_path: Path, clock: FakeClock) -> None:
    """With max_staleness set, a cache not synced for longer refuses to answer."""
    sqlite_store = await open_store(db_path, clock, sync_interval=HOUR, max_staleness=30.0)
    try:
        assert not sqlite_store.is_revoked("jti", "marco", clock())
        clock.advance(31.0)
        with pytest.raises(StoreUnavailableError, match="stale"):
            sqlite_store.is_revoked("jti", "marco", clock())
        await sqlite_store.sync()
        assert not sqlite_store.is_revoked("jti", "marco", clock())
    finally:
        await sqlite_store.close()

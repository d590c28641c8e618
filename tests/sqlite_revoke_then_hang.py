"""Helper for the kill -9 test: revoke one jti in a SQLite store, say so, then wait to be killed.

Usage: python tests/sqlite_revoke_then_hang.py DB_PATH JTI
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from gateway.revocation.sqlite import SqliteRevocationStore


async def revoke_then_hang(path: Path, jti: str) -> None:
    """Announce on stdout only after revoke_token returned, then never close the store."""
    store = SqliteRevocationStore(path, clock=time.time)
    await store.start()
    await store.revoke_token(jti, time.time() + 3600.0)
    print(f"revoked {jti}", flush=True)
    await asyncio.sleep(60.0)  # the test SIGKILLs us here: close() never runs


if __name__ == "__main__":
    asyncio.run(revoke_then_hang(Path(sys.argv[1]), sys.argv[2]))

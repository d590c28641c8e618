"""Credentials: where password hashes come from, and checking a password against one.

Hashing is argon2id (argon2-cffi); existing bcrypt `$2b$` hashes verify too. Every check
runs on a small dedicated thread pool, never on the event loop, and an unknown user is
checked against a dummy hash so that answer and timing match a wrong password.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import argon2
import bcrypt
import yaml

from gateway.config import Users
from gateway.errors import ConfigError, LoginBusyError
from gateway.yamlfile import load_yaml

log = logging.getLogger(__name__)
_hasher = argon2.PasswordHasher()  # argon2id, RFC 9106 defaults of argon2-cffi
_BCRYPT_PREFIXES = ("$2b$", "$2a$", "$2y$")


class CredentialStore(Protocol):
    """Maps a username to its password hash."""

    def password_hash(self, username: str) -> str | None:
        """The stored hash, or None for an unknown user."""


class InlineCredentials:
    """Users listed in the config file itself (`users.inline`)."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        self._hashes = dict(hashes)

    def password_hash(self, username: str) -> str | None:
        return self._hashes.get(username)


def load_users_file(path: Path) -> InlineCredentials:
    """Read a YAML map `username: hash` (the `users.file` backend)."""
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"users.file: cannot read {path}: {exc}"]) from exc
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError([f"users.file: {path} must map usernames to hash strings"])
    try:
        Users(inline=data)
    except ValueError as exc:
        raise ConfigError([f"users.file: {exc}"]) from exc
    return InlineCredentials(data)


def build_credentials(users: Users) -> CredentialStore:
    """Inline users, plus those of `users.file` (the file wins on a clash)."""
    hashes = dict(users.inline)
    if users.file is not None:
        hashes.update(load_users_file(users.file)._hashes)
    return InlineCredentials(hashes)


def hash_password(password: str) -> str:
    """An argon2id hash of `password`, for the users section."""
    return _hasher.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    """Constant-time check of `password` against an argon2 or bcrypt hash."""
    if hashed.startswith(_BCRYPT_PREFIXES):
        secret = password.encode()
        try:
            if len(secret) > 72:
                # bcrypt reads only 72 bytes (newer releases refuse more): never a match.
                # Refusing at once would tell a timing observer the user exists (an unknown
                # user costs a whole hash), so the hash's cost is spent anyway.
                bcrypt.checkpw(b"", hashed.encode())
                return False
            return bcrypt.checkpw(secret, hashed.encode())
        except ValueError:
            log.error("password_hash_invalid")
            return False
    try:
        return _hasher.verify(hashed, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        log.error("password_hash_invalid")
        return False


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, made once per process, checked for unknown users."""
    return hash_password(secrets.token_urlsafe(24))


class PasswordChecker:
    """Checks credentials off the event loop, with bounded parallelism (argon2 uses ~64 MiB)."""

    def __init__(self, store: CredentialStore, workers: int = 2,
                 max_pending: int = 32) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash")
        self._dummy_hash = _dummy_hash()
        self._max_pending = max_pending
        self._pending = 0

    async def check(self, username: str, password: str) -> bool:
        """True only for a known user with the right password; same cost either way.

        At most `max_pending` checks queue up (about 1.5 s of work at ~0.1 s a hash on two
        threads); beyond that a login is refused at once with 503 rather than wait behind
        a flood.
        """
        if self._pending >= self._max_pending:
            raise LoginBusyError()
        stored = self._store.password_hash(username)
        hashed = stored if stored is not None else self._dummy_hash
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            matches = await loop.run_in_executor(self._executor, verify_password, password,
                                                 hashed)
        finally:
            self._pending -= 1
        return matches and stored is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

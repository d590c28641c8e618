"""Shared revocation store on Redis: one expiring key per revocation, pub/sub to spread them.

Every process subscribes first, then SCANs the full set into its cache, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.clock import Clock
from gateway.errors import StoreUnavailableError
from gateway.revocation import RevocationCache, StoreStatus

logger = logging.getLogger(__name__)

_SCAN_COUNT = 1000
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_WRITE_ERRORS = (RedisError, OSError, TimeoutError)

# Keep the later cutoff and the later expiry: a cutoff never moves backwards, whichever
# gateway's write lands last. Values stay the caller's exact float text (Lua's tostring
# would round to 14 digits and lose the sub-second part logout_all depends on).
_REVOKE_SUBJECT_LUA = """
local value = redis.call('GET', KEYS[1])
local cutoff, expires = ARGV[1], ARGV[2]
if value then
  local old_cutoff, old_expires = string.match(value, '^(%S+) (%S+)$')
  if tonumber(old_cutoff) and tonumber(old_cutoff) > tonumber(cutoff) then
    cutoff = old_cutoff
  end
  if tonumber(old_expires) and tonumber(old_expires) > tonumber(expires) then
    expires = old_expires
  end
end
value = cutoff .. ' ' .. expires
local pxat = string.format('%.0f', math.ceil(tonumber(expires) * 1000))
redis.call('SET', KEYS[1], value, 'PXAT', pxat)
redis.call('PUBLISH', ARGV[3], 's ' .. value .. ' ' .. ARGV[4])
return value
"""


# One SCAN step with its values, returned as a single JSON string: one bulk reply per
# batch instead of two per key, which is what lets a million keys load in seconds.
_SCAN_STEP_LUA = """
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local pairs = {}
for _, key in ipairs(step[2]) do
  local value = redis.pcall('GET', key)  -- a foreign non-string key is skipped, not fatal
  if type(value) == 'string' then pairs[#pairs + 1] = {key, value} end
end
return {step[1], cjson.encode(pairs)}
"""


class RedisRevocationStore:
    """A `RevocationStore` shared by every gateway on one Redis (redis://, rediss://, unix://).

    Keys: `<prefix>rt:<jti>` = `expires_at` and `<prefix>rs:<subject>` = `cutoff expires_at`,
    each expiring with the tokens it covers. Writes are published on `<prefix>revocations`
    as `t <expires_at> <jti>` / `s <cutoff> <expires_at> <subject>`. A background task
    follows the channel and PINGs it every second; `is_revoked` fails closed once that
    follower has not been in sync for `max_staleness` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        max_staleness: float = 30.0,
        key_prefix: str = "gateway:",
        longest_token_lifetime: float = 86400.0 + 30.0,
        socket_timeout: float = 2.0,
        start_timeout: float = 10.0,
        purge_interval: float = 60.0,
    ) -> None:
        """`socket_timeout` bounds every Redis call (a logout never hangs on a frozen Redis).

        `start_timeout`: how long `start` waits for Redis to answer before it gives up.
        """
        if url.startswith("redis+sentinel://"):
            raise ValueError("redis+sentinel:// is not supported yet; use redis:// or rediss://")
        if max_staleness <= 0 or socket_timeout <= 0:
            raise ValueError("max_staleness and socket_timeout must be positive")
        self.cache = RevocationCache()
        self._clock = clock
        self._max_staleness = max_staleness
        self._longest_lifetime = longest_token_lifetime
        self._socket_timeout = socket_timeout
        self._start_timeout = start_timeout
        self._purge_interval = purge_interval
        self._health_interval = min(1.0, max_staleness / 4)
        self._where = _describe(url)
        self._key_prefix = key_prefix
        self._channel = f"{key_prefix}revocations"
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),  # fail fast; the caller or the follower retries
        )
        self._revoke_subject_script = self._client.register_script(_REVOKE_SUBJECT_LUA)
        self._scan_step_script = self._client.register_script(_SCAN_STEP_LUA)
        self._loaded = asyncio.Event()
        self._session_up = False
        self._session_synced = False
        self._last_synced_at = -math.inf
        self._cut_off_since: float | None = None
        self._last_error = ""
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Subscribe, load every live revocation, and return once the cache is complete.

        Raises `StoreUnavailableError` when Redis has not answered within `start_timeout`:
        the gateway then refuses to start rather than serve without revocations.
        """
        if self._tasks:
            raise RuntimeError("RedisRevocationStore.start() called twice")
        self._cut_off_since = self._clock()
        self._tasks = [
            asyncio.create_task(self._follow_forever(), name="redis-revocation-follower"),
            asyncio.create_task(self._purge_forever(), name="redis-revocation-purge"),
        ]
        try:
            await self._wait_for_first_load()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the background tasks and close every connection."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def _wait_for_first_load(self) -> None:
        """Wait for the first full load; give up only while Redis stays unreachable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        while not self._loaded.is_set():
            if not self._session_up and loop.time() >= deadline:
                raise StoreUnavailableError(
                    f"redis revocation store at {self._where} unreachable for "
                    f"{self._start_timeout:g}s at start-up: {self._last_error}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._loaded.wait()

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        """Store and publish one revoked token id; returns only once Redis acknowledged it."""
        value = _float_text(expires_at)
        async with self._write("token"), self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._key(b"rt:", jti), value, pxat=_epoch_ms(expires_at))
            pipe.publish(self._channel, f"t {value} {jti}")
            await pipe.execute()
        self.cache.add_token(jti, expires_at)
        logger.info("revocation_stored kind=token jti=%s", jti)

    async def revoke_subject(self, subject: str, cutoff: float, expires_at: float) -> None:
        """Store and publish a subject cutoff that never moves backwards (logout_all)."""
        # A cutoff must outlive every token issued before it, whatever the caller passed.
        expires_at = max(expires_at, self._clock() + self._longest_lifetime)
        args = [_float_text(cutoff), _float_text(expires_at), self._channel, subject]
        async with self._write("subject"):
            stored = await self._revoke_subject_script(keys=[self._key(b"rs:", subject)], args=args)
        stored_cutoff, stored_expiry = _parse_cutoff(stored)
        self.cache.add_cutoff(subject, stored_cutoff, stored_expiry)
        logger.info("revocation_stored kind=subject cutoff=%s", args[0])

    @contextlib.asynccontextmanager
    async def _write(self, kind: str) -> AsyncIterator[None]:
        """Bound a write by the socket timeout and turn any failure into a 503."""
        try:
            async with asyncio.timeout(self._socket_timeout):
                yield
        except _WRITE_ERRORS as exc:
            logger.warning("revocation_write_failed kind=%s error=%s", kind, _reason(exc))
            raise StoreUnavailableError(
                "the revocation could not be stored in redis; try again", retry_after=1
            ) from exc

    def _key(self, kind: bytes, name: str) -> bytes:
        return self._key_prefix.encode() + kind + name.encode()

    def is_revoked(self, jti: str, subject: str, issued_at: float) -> bool:
        """Answer from the cache; fail closed when it cannot be trusted to be complete.

        A hit is always a hit (revocations are never undone); only a miss needs the cache
        to be loaded and in sync within `max_staleness`.
        """
        if self.cache.is_revoked(jti, subject, issued_at):
            return True
        if not self._loaded.is_set():
            raise StoreUnavailableError("revocation state is not loaded yet")
        age = self._clock() - self._last_synced_at
        if age > self._max_staleness:
            raise StoreUnavailableError(
                f"revocation state is stale: not in sync with redis for {age:.1f}s"
            )
        return False

    def status(self) -> StoreStatus:
        """Ready while `is_revoked` can answer; the detail says why not, or how fresh."""
        now = self._clock()
        away = "" if self._cut_off_since is None else f"{now - self._cut_off_since:.1f}s"
        if not self._loaded.is_set():
            if self._session_up or not self._last_error:
                return StoreStatus(False, "initial load in progress")
            return StoreStatus(False, f"redis unreachable for {away}: {self._last_error}")
        age = now - self._last_synced_at
        if age > self._max_staleness:
            return StoreStatus(
                False, f"redis unreachable for {away}; state stale ({age:.1f}s since last sync)"
            )
        if self._cut_off_since is not None:
            return StoreStatus(
                True, f"redis unreachable for {away}; serving cached state ({age:.1f}s old)"
            )
        return StoreStatus(True, f"in sync ({len(self.cache)} entries)")

    async def _follow_forever(self) -> None:
        """Keep a subscribed, loaded session; reconnect with backoff capped at one second."""
        delay = _FIRST_BACKOFF
        while True:
            try:
                await self._run_session()
            except Exception as exc:  # any failure ends the session; the next one reloads
                self._on_session_lost(exc)
            delay = _FIRST_BACKOFF if self._session_synced else min(delay * 2, _MAX_BACKOFF)
            self._session_up = self._session_synced = False
            await asyncio.sleep(delay)

    async def _run_session(self) -> None:
        """Subscribe, then reload while following the channel; runs until the link fails."""
        pubsub = self._client.pubsub()
        try:
            async with asyncio.timeout(self._socket_timeout):
                await pubsub.subscribe(self._channel)
                await _await_subscribed(pubsub)
            subscribed_at = self._clock()
            self._session_up = True
            async with asyncio.TaskGroup() as group:
                group.create_task(self._listen(pubsub))
                group.create_task(self._reload(subscribed_at))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # redis<8.2

    def _on_session_lost(self, exc: BaseException) -> None:
        """Start the cut-off clock on the first failure; later retries only log at debug."""
        first = self._session_synced or not self._last_error
        error = self._last_error = _reason(exc)
        if self._cut_off_since is None:
            self._cut_off_since = self._clock()
        level = logging.WARNING if first else logging.DEBUG
        logger.log(level, "redis_revocation_link_lost where=%s error=%s", self._where, error)

    async def _reload(self, subscribed_at: float) -> None:
        """SCAN every revocation into the cache (merging: entries are only ever added)."""
        started = time.monotonic()
        pattern = _glob_escape(self._key_prefix) + "r*"
        cursor, loaded = "0", 0
        while True:
            cursor, batch = await self._scan_step_script(args=[cursor, pattern, _SCAN_COUNT])
            loaded += self._apply_loaded(batch)
            if _text(cursor) == "0":
                break
        # Everything revoked before the subscription is in the SCAN; everything after it
        # arrives on the channel. So the cache is complete as of `subscribed_at`.
        self._last_synced_at = max(self._last_synced_at, subscribed_at)
        self._session_synced = True
        self._cut_off_since = None
        self._loaded.set()
        logger.info(
            "redis_revocation_loaded entries=%d seconds=%.2f", loaded, time.monotonic() - started
        )

    def _apply_loaded(self, batch: str | bytes) -> int:
        """Merge one SCAN step's JSON `[[key, value], ...]` into the cache."""
        pairs = json.loads(_text(batch))
        if not isinstance(pairs, list):  # cjson encodes an empty table as `{}`
            return 0
        tokens, subjects = f"{self._key_prefix}rt:", f"{self._key_prefix}rs:"
        for key, value in pairs:
            if key.startswith(tokens):
                self._apply_token(key[len(tokens) :], value)
            elif key.startswith(subjects):
                self._apply_cutoff(key[len(subjects) :], value)
        return len(pairs)

    async def _listen(self, pubsub: PubSub) -> None:
        """Apply each published revocation; PING every second and fail if PONG is late."""
        loop = asyncio.get_running_loop()
        next_ping, ping_sent = loop.time(), None
        while True:
            now = loop.time()
            if ping_sent is None and now >= next_ping:
                await pubsub.ping(_float_text(self._clock()))
                ping_sent = now
            if ping_sent is not None and now - ping_sent > self._socket_timeout:
                raise TimeoutError(f"no PONG from redis within {self._socket_timeout:g}s")
            wake = next_ping if ping_sent is None else ping_sent + self._socket_timeout
            message = await pubsub.get_message(timeout=max(wake - now, 0.001))
            if message is None:
                continue
            if message["type"] == "pong":
                self._on_pong(_text(message["data"]))
                next_ping, ping_sent = loop.time() + self._health_interval, None
            elif message["type"] == "message":
                self._apply_message(_text(message["data"]))

    def _on_pong(self, sent_at: str) -> None:
        """Every message published before the PING was read before its PONG: in sync then."""
        if self._session_synced:
            self._last_synced_at = max(self._last_synced_at, float(sent_at))

    def _apply_message(self, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        if kind == "t":
            expires_at, _, jti = rest.partition(" ")
            self._apply_token(jti, expires_at)
        elif kind == "s":
            cutoff, _, rest = rest.partition(" ")
            expires_at, _, subject = rest.partition(" ")
            self._apply_cutoff(subject, f"{cutoff} {expires_at}")
        else:
            logger.warning("redis_revocation_bad_message kind=%.8s", kind)

    def _apply_token(self, jti: str, value: str) -> None:
        try:
            expires_at = float(value)
        except ValueError:
            # Not a value this store wrote; keep the revocation rather than drop it.
            expires_at = self._clock() + self._longest_lifetime
        self.cache.add_token(jti, expires_at)

    def _apply_cutoff(self, subject: str, value: str) -> None:
        try:
            cutoff, expires_at = _parse_cutoff(value)
        except ValueError:
            # Unreadable cutoff: revoke what exists now rather than nothing.
            cutoff, expires_at = self._clock(), self._clock() + self._longest_lifetime
        self.cache.add_cutoff(subject, cutoff, expires_at)

    async def _purge_forever(self) -> None:
        """Drop expired entries from the cache; Redis expires its own keys. A failed round
        is logged and the next one runs (as in the other stores)."""
        while True:
            await asyncio.sleep(self._purge_interval)
            try:
                removed = self.cache.purge(self._clock())
            except Exception:
                logger.exception("revocation_purge_failed store=redis")
                continue
            logger.debug("redis_revocation_purged removed=%d", removed)


async def _await_subscribed(pubsub: PubSub) -> None:
    """Wait for the SUBSCRIBE confirmation: from then on no publication is missed."""
    while True:
        message = await pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "subscribe":
            return


def _float_text(value: float) -> str:
    """Exact, round-trippable text for a finite float (inf/nan would confuse Lua)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite time: {value!r}")
    return repr(float(value))


def _epoch_ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _parse_cutoff(value: str | bytes) -> tuple[float, float]:
    cutoff, expires_at = _text(value).split(" ")
    return float(cutoff), float(expires_at)


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")


def _glob_escape(prefix: str) -> str:
    """Escape SCAN MATCH metacharacters so a prefix like `gw[1]:` is taken literally."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in prefix)


def _reason(exc: BaseException) -> str:
    """A one-line cause, unwrapping TaskGroup exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _describe(url: str) -> str:
    """The URL without credentials, for logs and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"

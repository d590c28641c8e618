"""Revocation benchmark (issue 3): propagation between two gateways on one Redis, and the
reload time and memory of a million revocations in the Redis and SQLite stores.

Loopback only, against a private memory-only redis-server that this script starts; every
process it starts is stopped by pid at the end, also on error. Not part of the test suite.

    python -m bench.revocation [--quick] [--out PATH]   # -> bench/results/revocation.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import redis
import yaml

from gateway.config import parse_config
from gateway.revocation.redis import RedisRevocationStore
from gateway.revocation.sqlite import SqliteRevocationStore
from gateway.tokens import TokenIssuer, load_signing_keys
from gateway.users import hash_password

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
KEY_PREFIX = "gateway:"  # RedisRevocationStore's default: the one `gateway serve` uses
VIOLATION_MS = 50.0  # B must not accept a token this long after A's 204
POLL_DEADLINE = 2.0  # seconds B may take before a token counts as not propagated
START_DEADLINE = 20.0
CHILD_TIMEOUT = 900.0
FILL_BATCH = 10_000
WARM_UP = 20
MAX_NOT_PROPAGATED = 10
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work a run does: `--quick` for a smoke run, else the full figures."""

    tokens: int  # propagation: tokens logged out on A, each polled on B until its 401
    entries: int  # reload and memory: live revocations pre-filled in each store


FULL = Sizes(tokens=1_000, entries=1_000_000)
QUICK = Sizes(tokens=100, entries=20_000)


@dataclass(frozen=True, slots=True)
class Propagation:
    """Time from A's 204 to B's first 401 (both as the client saw them), over `tokens`."""

    tokens: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    violations: int  # B answers 2xx to requests sent > VIOLATION_MS after A's 204
    not_propagated: int  # still accepted by B after POLL_DEADLINE
    first_poll_rejected: int  # B's very first answer after A's 204 was already 401
    polls: int
    round_trip_p50_ms: float  # one /auth/verify on B: the floor of any measured latency


@dataclass(frozen=True, slots=True)
class Load:
    """One fresh process starting a store over `entries` pre-filled revocations."""

    store: str
    entries: int
    seconds: float
    rss_before_mb: float
    rss_after_mb: float
    delta_mb: float
    peak_mb: float


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stop_process(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM this pid, SIGKILL it if still alive after `grace` seconds; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)


def start_redis(stack: contextlib.ExitStack) -> str:
    """A private redis-server (loopback, nothing on disk) on a free port; returns its URL."""
    port = free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(stop_process, process)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + START_DEADLINE
    try:
        while True:
            try:
                client.ping()
                return url
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not come up on port {port}") from None
                time.sleep(0.02)
    finally:
        client.close()


def start_gateway(stack: contextlib.ExitStack, data: dict[str, Any], workdir: Path,
                  name: str) -> tuple[str, subprocess.Popen[bytes], Path]:
    """`gateway serve` on the config `data` (stderr to `<name>.log`); stopped by the stack."""
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data))
    log_path = workdir / f"{name}.log"
    log: IO[bytes] = stack.enter_context(log_path.open("wb"))
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "-c", str(config)],
                               stdout=log, stderr=log, cwd=ROOT)
    stack.callback(stop_process, process)
    return f"http://127.0.0.1:{data['listen']['port']}", process, log_path


async def wait_ready(session: aiohttp.ClientSession, url: str,
                     process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll `/readyz` until 200, with a deadline; show the log tail if it never comes."""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url + "/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    tail = (await asyncio.to_thread(log_path.read_text, errors="replace"))[-2000:]
    raise RuntimeError(f"gateway at {url} not ready within {START_DEADLINE}s:\n{tail}")


# -- 1. propagation ----------------------------------------------------------------------


def gateway_data(redis_url: str, workdir: Path, name: str, secret: str,
                 password_hash: str) -> dict[str, Any]:
    """A gateway config on the Redis store; tokens are checked with GET /auth/verify."""
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "tokens": {"secret": secret, "ttl": "24h", "leeway": "30s"},
        "users": {"inline": {"bench": password_hash}},
        "revocation": {"store": "redis", "url": redis_url},
        "data_dir": str(workdir / f"data-{name}"),
        "routes": [{"prefix": "/", "upstream": "http://127.0.0.1:9", "auth": "required"}],
    }


def mint_tokens(data: dict[str, Any], workdir: Path, count: int) -> list[str]:
    """Tokens signed by the gateway's own TokenIssuer with the gateways' secret and config."""
    config = parse_config(data, {}, workdir)
    issuer = TokenIssuer(config.tokens, load_signing_keys(config.tokens, config.tokens.secret),
                         time.time)
    return [issuer.issue(f"user-{index % 100}")[0] for index in range(count)]


async def verify_status(session: aiohttp.ClientSession, url: str, token: str) -> int:
    async with session.get(url + "/auth/verify",
                           headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status


async def logout_then_poll(session: aiohttp.ClientSession, url_a: str, url_b: str,
                           token: str) -> tuple[float | None, int, int]:
    """Log out on A, then poll B until its first 401: (latency s or None, polls, violations)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(url_a + "/user/logout", headers=headers) as response:
        if response.status != 204:
            raise RuntimeError(f"logout on A answered {response.status}")
        logged_out = time.perf_counter()
    polls = violations = 0
    while True:
        sent = time.perf_counter()
        status = await verify_status(session, url_b, token)
        received = time.perf_counter()
        polls += 1
        if status == 401:
            return received - logged_out, polls, violations
        if status != 204:
            raise RuntimeError(f"B answered {status} to a token it should know")
        if sent - logged_out > VIOLATION_MS / 1000:
            violations += 1
        if received - logged_out > POLL_DEADLINE:
            return None, polls, violations


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def measure_propagation(url_a: str, url_b: str, tokens: list[str]) -> Propagation:
    """Logout on A, poll B, one token at a time; the first WARM_UP tokens are not counted."""
    latencies: list[float] = []
    round_trips: list[float] = []
    violations = not_propagated = first_poll = polls = 0
    async with aiohttp.ClientSession() as session:
        for token in tokens:  # every token is valid on B first (and in its verify cache)
            sent = time.perf_counter()
            if await verify_status(session, url_b, token) != 204:
                raise RuntimeError("B rejects a freshly minted token")
            round_trips.append((time.perf_counter() - sent) * 1000)
        for index, token in enumerate(tokens):
            latency, token_polls, token_violations = await logout_then_poll(
                session, url_a, url_b, token)
            if index < WARM_UP:
                continue
            polls += token_polls
            violations += token_violations
            first_poll += token_polls == 1 and latency is not None
            if latency is None:
                not_propagated += 1
                if not_propagated > MAX_NOT_PROPAGATED:  # keeps a broken run bounded in time
                    raise RuntimeError(f"{not_propagated} logouts never reached B")
            else:
                latencies.append(latency * 1000)
    latencies.sort()
    return Propagation(
        tokens=len(tokens) - WARM_UP, p50_ms=round(percentile(latencies, 0.50), 3),
        p99_ms=round(percentile(latencies, 0.99), 3), max_ms=round(latencies[-1], 3),
        mean_ms=round(sum(latencies) / len(latencies), 3), violations=violations,
        not_propagated=not_propagated, first_poll_rejected=first_poll, polls=polls,
        round_trip_p50_ms=round(percentile(sorted(round_trips), 0.50), 3))


async def run_propagation(redis_url: str, workdir: Path, count: int) -> Propagation:
    """Two `gateway serve` processes (A, B) on one Redis; both stopped before returning."""
    secret, password_hash = secrets.token_urlsafe(48), hash_password(secrets.token_urlsafe(16))
    data_a = gateway_data(redis_url, workdir, "a", secret, password_hash)
    data_b = gateway_data(redis_url, workdir, "b", secret, password_hash)
    tokens = mint_tokens(data_a, workdir, count + WARM_UP)
    with contextlib.ExitStack() as stack:
        url_a, process_a, log_a = start_gateway(stack, data_a, workdir, "gateway-a")
        url_b, process_b, log_b = start_gateway(stack, data_b, workdir, "gateway-b")
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, url_a, process_a, log_a)
            await wait_ready(session, url_b, process_b, log_b)
        return await measure_propagation(url_a, url_b, tokens)


# -- 2 and 3. reload time and memory -------------------------------------------------------


def expiry(index: int, now: float) -> float:
    """Live for one to two hours, spread so that keys do not all expire together."""
    return now + 3600.0 + index % 3600


async def check_redis_key_format(url: str) -> None:
    """Fail loudly if the store no longer writes the format `fill_redis` imitates."""
    prefix, jti, expires_at = "bench-format-check:", "jti-format-check", time.time() + 3600.0
    store = RedisRevocationStore(url, clock=time.time, key_prefix=prefix)
    await store.start()
    try:
        await store.revoke_token(jti, expires_at)
    finally:
        await store.close()
    client = redis.Redis.from_url(url)
    try:
        key = f"{prefix}rt:{jti}"
        value, expire_ms = client.get(key), client.pexpiretime(key)
        client.delete(key)
    finally:
        client.close()
    if value != repr(expires_at).encode() or expire_ms != math.ceil(expires_at * 1000):
        raise RuntimeError(f"store key format changed ({value!r}, {expire_ms}): fix fill_redis")


def fill_redis(url: str, count: int) -> tuple[float, float]:
    """Write `count` token revocations as `revoke_token` stores them (minus the PUBLISH).

    Returns (seconds taken, Redis used_memory in MB).
    """
    client = redis.Redis.from_url(url)
    client.flushdb()  # drop what the propagation run revoked
    started, now = time.perf_counter(), time.time()
    try:
        with client.pipeline(transaction=False) as pipe:
            for index in range(count):
                expires_at = expiry(index, now)
                pipe.set(f"{KEY_PREFIX}rt:{secrets.token_urlsafe(16)}", repr(expires_at),
                         pxat=math.ceil(expires_at * 1000))
                if len(pipe) >= FILL_BATCH:
                    pipe.execute()
            pipe.execute()
        if client.dbsize() != count:
            raise RuntimeError(f"redis holds {client.dbsize()} keys, not {count}")
        used: int = client.info("memory")["used_memory"]
    finally:
        client.close()
    return time.perf_counter() - started, used / MB


async def create_sqlite_schema(path: Path) -> None:
    """Let the store create its own file and schema."""
    store = SqliteRevocationStore(path, clock=time.time)
    await store.start()
    await store.close()


def fill_sqlite(path: Path, count: int) -> tuple[float, float]:
    """Insert `count` token rows into the store's table. Returns (seconds, file size in MB)."""
    asyncio.run(create_sqlite_schema(path))
    started, now = time.perf_counter(), time.time()
    rows = (("token", secrets.token_urlsafe(16), None, expiry(index, now))
            for index in range(count))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO revocations (kind, key, cutoff, expires_at) VALUES (?, ?, ?, ?)", rows)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return seconds, size / MB


def run_child(store: str, where: str, count: int) -> Load:
    """Load the store in a fresh process (killed on timeout or error) and read its figures."""
    command = [sys.executable, "-m", "bench.revocation", "--child", store, where,
               "--expect", str(count)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            timeout=CHILD_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{store} load failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return Load(store=store, **figures)


def memory_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB, from /proc/self/status."""
    fields: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


async def child_load(store_kind: str, where: str, expect: int) -> dict[str, Any]:
    """In the fresh process: RSS, then `start()` timed until ready and complete, then RSS."""
    gc.collect()
    before, _ = memory_mb()
    store: RedisRevocationStore | SqliteRevocationStore
    if store_kind == "redis":
        store = RedisRevocationStore(where, clock=time.time)
    else:
        store = SqliteRevocationStore(Path(where), clock=time.time)
    started = time.perf_counter()
    await store.start()
    seconds = time.perf_counter() - started
    try:
        if len(store.cache) != expect or not store.status().ready:
            raise RuntimeError(f"loaded {len(store.cache)} of {expect} entries")
        gc.collect()
        after, peak = memory_mb()
    finally:
        await store.close()
    return {"entries": expect, "seconds": round(seconds, 3), "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1), "delta_mb": round(after - before, 1),
            "peak_mb": round(peak, 1)}


# -- the run -------------------------------------------------------------------------------


def run_benchmark(sizes: Sizes) -> dict[str, Any]:
    """Every measurement, with every process it starts stopped before it returns."""
    with tempfile.TemporaryDirectory(prefix="bench-revocation-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        redis_url = start_redis(stack)
        print(f"propagation: {sizes.tokens} tokens ...", flush=True)
        propagation = asyncio.run(run_propagation(redis_url, workdir, sizes.tokens))
        asyncio.run(check_redis_key_format(redis_url))
        print(f"redis: filling {sizes.entries} revocations ...", flush=True)
        redis_fill_s, redis_used_mb = fill_redis(redis_url, sizes.entries)
        redis_load = run_child("redis", redis_url, sizes.entries)
        print(f"sqlite: filling {sizes.entries} rows ...", flush=True)
        sqlite_path = workdir / "sqlite" / "revocations.db"
        sqlite_fill_s, sqlite_file_mb = fill_sqlite(sqlite_path, sizes.entries)
        sqlite_load = run_child("sqlite", str(sqlite_path), sizes.entries)
        redis_version = redis_server_version(redis_url)
    return {
        "benchmark": "revocation",
        "sizes": asdict(sizes),
        "environment": environment(redis_version),
        "propagation": asdict(propagation),
        "reload": [asdict(redis_load), asdict(sqlite_load)],
        "stores": {
            "redis": {"fill_seconds": round(redis_fill_s, 2),
                      "server_used_memory_mb": round(redis_used_mb, 1)},
            "sqlite": {"fill_seconds": round(sqlite_fill_s, 2),
                       "file_mb": round(sqlite_file_mb, 1)},
        },
    }


def redis_server_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        version: str = client.info("server")["redis_version"]
    finally:
        client.close()
    return version


def environment(redis_version: str) -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "redis_server": redis_version,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def print_table(results: dict[str, Any]) -> None:
    p = results["propagation"]
    print(f"\npropagation, A logout -> B first 401, {p['tokens']} tokens "
          f"(two `gateway serve` processes, one Redis):")
    print(f"  p50 {p['p50_ms']:.2f} ms   p99 {p['p99_ms']:.2f} ms   max {p['max_ms']:.2f} ms   "
          f"mean {p['mean_ms']:.2f} ms")
    print(f"  violations (accepted > {VIOLATION_MS:g} ms after the 204): {p['violations']}   "
          f"not propagated in {POLL_DEADLINE:g} s: {p['not_propagated']}   "
          f"first poll already 401: {p['first_poll_rejected']}/{p['tokens']}")
    print(f"  one request to B (the floor of these figures): p50 {p['round_trip_p50_ms']:.2f} ms")
    print(f"\n{'store':<8}{'entries':>10}{'reload s':>10}{'RSS before':>12}{'RSS after':>11}"
          f"{'delta MB':>10}{'peak MB':>9}")
    for load in results["reload"]:
        print(f"{load['store']:<8}{load['entries']:>10}{load['seconds']:>10.2f}"
              f"{load['rss_before_mb']:>12.1f}{load['rss_after_mb']:>11.1f}"
              f"{load['delta_mb']:>10.1f}{load['peak_mb']:>9.1f}")
    stores = results["stores"]
    print(f"\nredis-server used_memory {stores['redis']['server_used_memory_mb']} MB; "
          f"sqlite file {stores['sqlite']['file_mb']} MB")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.revocation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.tokens} tokens, {QUICK.entries} entries (seconds)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: bench/results/revocation.json, "
                             "or revocation-quick.json with --quick)")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "WHERE"), help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        store_kind, where = args.child
        print(json.dumps(asyncio.run(child_load(store_kind, where, args.expect))))
        return 0
    if not os.access(REDIS_SERVER, os.X_OK):
        print(f"{REDIS_SERVER} is not installed", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so every process started so far is stopped by pid.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = QUICK if args.quick else FULL
    results = {"quick": args.quick, **run_benchmark(sizes)}
    print_table(results)
    out: Path = args.out or RESULTS / ("revocation-quick.json" if args.quick
                                       else "revocation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out}")
    propagation = results["propagation"]
    return 1 if propagation["violations"] or propagation["not_propagated"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end with Redis: `gateway serve --workers 2` sharing revocations through a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from tests.conftest import PASSWORD, base_config_data
from tests.redis_server import RedisServer, free_port
from tests.test_cli_e2e import ROOT, GatewayProcess

_LISTENING = re.compile(r"\[(\d+)\] gateway listening .*pid=(\d+)")




@pytest.fixture
def write_redis_config(echo_upstream: TestServer, tmp_path: Path) -> Callable[[str], Path]:
    """Write a config for the echo upstream whose revocation store is Redis at `url`."""
    upstream = str(echo_upstream.make_url("")).rstrip("/")

    def write(url: str) -> Path:
        data: dict[str, Any] = base_config_data(upstream, tmp_path)
        data["listen"] = {"host": "127.0.0.1", "port": free_port()}
        data["revocation"] = {"store": "redis", "url": url}
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def worker_pids(gateway: GatewayProcess) -> set[int]:
    """Pids of the workers this gateway logged as listening that still run its config."""
    alive = set()
    for match in _LISTENING.finditer(gateway.logs()):
        with contextlib.suppress(OSError):  # gone already
            cmdline = Path(f"/proc/{match.group(2)}/cmdline").read_bytes()
            if str(gateway.config).encode() in cmdline:  # never some other process
                alive.add(int(match.group(2)))
    return alive


def stop_with_workers(gateway: GatewayProcess) -> None:
    """SIGTERM the supervisor (it forwards), SIGKILL it if stuck, then any worker left over."""
    process = gateway.process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for pid in worker_pids(gateway):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def processes() -> AsyncIterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        await asyncio.to_thread(stop_with_workers, gateway)


async def wait_for_workers(gateway: GatewayProcess, count: int, within: float = 20.0) -> set[str]:
    """Wait until `count` worker processes log that they listen; returns their pids."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        pids = {match.group(2) for match in _LISTENING.finditer(gateway.logs())}
        if len(pids) >= count:
            return pids
        assert gateway.process is not None and gateway.process.poll() is None, gateway.logs()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} workers not listening within {within}s:\n{gateway.logs()}")


async def status_of(session: aiohttp.ClientSession, url: str, token: str) -> int:
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status


def pids_answering(logs: str, path: str, status: int) -> set[str]:
    """Pids of the access-log lines for `path` with `status` (each line carries `[pid]`)."""
    return {line.split("[")[1].split("]")[0] for line in logs.splitlines()
            if f"path={path} " in line and f"status={status} " in line}


async def test_workers_share_redis_revocations(
        write_redis_config: Callable[[str], Path], redis_server: RedisServer, tmp_path: Path,
        processes: list[GatewayProcess]) -> None:
    """--workers 2 on Redis: a logout through one worker holds on both; SIGTERM exits 0."""
    gateway = GatewayProcess(write_redis_config(redis_server.url), tmp_path / "gateway.log",
                             "--workers", "2")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    workers = await wait_for_workers(gateway, 2)
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/user/login",
                                json={"username": "marco", "password": PASSWORD}) as response:
            assert response.status == 200
            token: str = (await response.json())["token"]
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection: any worker
        async with aiohttp.ClientSession(connector=fresh) as each:
            before = [await status_of(each, gateway.url + "/before", token) for _ in range(30)]
            assert set(before) == {200}
            async with session.post(gateway.url + "/user/logout",
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 204
            logged_out = time.monotonic()
            answers: list[tuple[float, int]] = []  # (seconds after the 204, status)
            while [status for _, status in answers[-30:]] != [401] * 30:
                assert time.monotonic() - logged_out < 3.0, f"not 30 x 401 in 3 s: {answers}"
                status = await status_of(each, gateway.url + "/api", token)
                answers.append((time.monotonic() - logged_out, status))
    accepted = [(after, status) for after, status in answers if status != 401]
    assert {status for _, status in accepted} <= {200}, accepted
    assert all(after < 1.0 for after, _ in accepted), f"accepted after the logout: {accepted}"
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.wait) == 0
    logs = gateway.logs()
    assert pids_answering(logs, "/api", 401) == workers, "both workers rejected it after logout"
    assert token not in logs


async def test_workers_exit_when_the_supervisor_is_killed(
        write_redis_config: Callable[[str], Path], redis_server: RedisServer, tmp_path: Path,
        processes: list[GatewayProcess]) -> None:
    """A SIGKILLed supervisor leaves no orphan workers serving the port with their old state."""
    gateway = GatewayProcess(write_redis_config(redis_server.url), tmp_path / "gateway.log",
                             "--workers", "2")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    await wait_for_workers(gateway, 2)
    gateway.signal(signal.SIGKILL)
    await asyncio.to_thread(gateway.wait)
    end = time.monotonic() + 5.0
    while orphans := worker_pids(gateway):
        assert time.monotonic() < end, f"workers {sorted(orphans)} outlive their supervisor by 5 s"
        await asyncio.sleep(0.1)


async def test_serve_exits_1_when_redis_is_unreachable(
        write_redis_config: Callable[[str], Path], dead_port: int) -> None:
    """Unreachable Redis: start-up gives up (start_timeout) with exit 1, no traceback."""
    config = write_redis_config(f"redis://:hunter2-redis-password@127.0.0.1:{dead_port}/0")
    started = time.monotonic()
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "serve", "-c", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "startup_failed" in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
    assert took < 15.0, f"start-up took {took:.1f}s to give up"

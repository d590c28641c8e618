"""End to end: `python -m gateway serve` as a real subprocess in front of a real upstream."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
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

from tests.conftest import PASSWORD, TEST_SECRET, base_config_data, wait_until

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class GatewayProcess:
    """A `gateway serve` subprocess with its stderr kept in a file."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.config, self.log_path, self.extra = config, log, extra
        self.process: subprocess.Popen[bytes] | None = None
        data = yaml.safe_load(config.read_text())
        self.url = f"http://127.0.0.1:{data['listen']['port']}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config),
                 *self.extra], stderr=log, stdout=log, cwd=ROOT)

    async def wait_ready(self, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                assert self.process is not None and self.process.poll() is None, self.logs()
                try:
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not ready in {deadline}s:\n{self.logs()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gateway still running after {timeout}s:\n"
                                 f"{self.logs()}") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
async def write_config(echo_upstream: TestServer, tmp_path: Path) -> Callable[..., Path]:
    upstream = str(echo_upstream.make_url("")).rstrip("/")

    def write(**overrides: Any) -> Path:
        data = base_config_data(upstream, tmp_path, **overrides)
        data["listen"] = {"host": "127.0.0.1", "port": free_port(),
                          **overrides.get("listen", {})}
        data.setdefault("revocation", {"store": "sqlite"})
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
async def processes() -> AsyncIterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


async def run_serve(config: Path) -> subprocess.CompletedProcess[str]:
    """`gateway serve` run to completion (for start-ups that must fail)."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "serve", "-c", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)


async def login(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(url + "/user/login",
                            json={"username": "marco", "password": PASSWORD}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        token: str = (await response.json())["token"]
        return token


async def status_of(session: aiohttp.ClientSession, url: str, token: str) -> int:
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status


async def test_serve_login_proxy_logout_survives_kill_9(
        write_config: Callable[..., Path], tmp_path: Path,
        processes: list[GatewayProcess]) -> None:
    """The whole story: login, proxied call with identity, logout, kill -9, restart: the
    token stays revoked; SIGTERM then exits 0; the logs never hold the token."""
    config = write_config(revocation={"store": "sqlite", "path": str(tmp_path / "rev.db")})
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    async with aiohttp.ClientSession() as session:
        token = await login(session, gateway.url)
        headers = {"Authorization": f"Bearer {token}", "X-Auth-UserId": "admin"}
        async with session.get(gateway.url + "/api/hello", headers=headers) as response:
            echo = await response.json()
        assert [v for k, v in echo["headers"] if k.lower() == "x-auth-userid"] == ["marco"]
        async with session.post(gateway.url + "/user/logout",
                                headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 204
        gateway.signal(signal.SIGKILL)
        gateway.wait()
        gateway.start()
        await gateway.wait_ready()
        async with session.get(gateway.url + "/api/hello",
                               headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 401
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    gateway.signal(signal.SIGTERM)
    assert gateway.wait() == 0
    logs = gateway.logs()
    assert "listening" in logs and "logout" in logs
    assert token not in logs and token.split(".")[2] not in logs and PASSWORD not in logs


async def test_sigterm_drains_an_in_flight_request(write_config: Callable[..., Path],
                                                   tmp_path: Path,
                                                   processes: list[GatewayProcess]) -> None:
    """SIGTERM lets a request already in flight finish, then exits 0."""
    config = write_config(upstream_timeouts={"connect": "2s", "read": "5s"})
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    async with aiohttp.ClientSession() as session:
        token = await login(session, gateway.url)
        slow = asyncio.create_task(status_of(session, gateway.url + "/slow?seconds=1", token))
        await asyncio.sleep(0.3)
        gateway.signal(signal.SIGTERM)
        assert await slow == 200
    assert await asyncio.to_thread(gateway.wait) == 0


async def test_serve_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    """A config mistake stops start-up with the key path and exit code 2."""
    config = tmp_path / "bad.yaml"
    config.write_text("tokens:\n  secret: short\nroutes:\n  - {prefix: /, upstream: nope}\n"
                      "bogus: 1\n")
    result = await run_serve(config)
    assert result.returncode == 2
    for expected in ("tokens.secret:", "routes[0].upstream:", "bogus: unknown key"):
        assert expected in result.stderr
    assert "Traceback" not in result.stderr


async def test_serve_with_an_unopenable_store_exits_1_without_traceback(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    """A revocation database that cannot be opened stops start-up with a clear message."""
    config = write_config(revocation={"store": "sqlite",
                                      "path": str(tmp_path / "corrupt.db")})
    (tmp_path / "corrupt.db").write_bytes(b"this is not a sqlite database" * 100)
    result = await run_serve(config)
    assert result.returncode == 1
    assert "startup_failed" in result.stderr and "corrupt.db" in result.stderr
    assert "Traceback" not in result.stderr


async def test_generated_secret_is_kept_private_and_reused(
        echo_upstream: TestServer, tmp_path: Path, processes: list[GatewayProcess]) -> None:
    """With no secret configured, one is generated once (mode 0600) and survives restarts:
    a token issued before a restart still verifies after it."""
    upstream = str(echo_upstream.make_url("")).rstrip("/")
    data = base_config_data(upstream, tmp_path)
    data["tokens"] = {"ttl": "1h"}
    data["listen"] = {"host": "127.0.0.1", "port": free_port()}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    secret_file = tmp_path / "data" / "jwt-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert TEST_SECRET not in secret_file.read_text()
    async with aiohttp.ClientSession() as session:
        token = await login(session, gateway.url)
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
        gateway.start()
        await gateway.wait_ready()
        assert await status_of(session, gateway.url + "/api", token) == 200
    assert "signing_secret_generated" in gateway.logs()
    assert secret_file.read_text().strip() not in gateway.logs()


async def test_workers_share_revocations_through_sqlite(
        write_config: Callable[..., Path], tmp_path: Path,
        processes: list[GatewayProcess]) -> None:
    """--workers 2 with SQLite: a logout through any worker holds on all of them within
    a few sync intervals; SIGTERM stops them all with exit 0."""
    config = write_config(revocation={"store": "sqlite", "path": str(tmp_path / "rev.db"),
                                      "sync_interval": "50ms"})
    gateway = GatewayProcess(config, tmp_path / "gateway.log", "--workers", "2")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    connector = aiohttp.TCPConnector(force_close=True)  # new connection: any worker
    async with aiohttp.ClientSession(connector=connector) as session:
        token = await login(session, gateway.url)
        async with session.post(gateway.url + "/user/logout",
                                headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 204
        await asyncio.sleep(0.3)
        statuses = [await status_of(session, gateway.url + "/api", token) for _ in range(30)]
    assert set(statuses) == {401}
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.wait) == 0
    rejecting = {line.split("[")[1].split("]")[0] for line in gateway.logs().splitlines()
                 if "path=/api " in line and "status=401" in line}
    assert len(rejecting) == 2, "both workers answered, and both rejected the token"


async def test_workers_answer_metrics_with_every_workers_counters(
        write_config: Callable[..., Path], tmp_path: Path,
        processes: list[GatewayProcess]) -> None:
    """--workers 2: whichever worker answers the scrape, /metrics counts the requests of
    both (a scrape reaching one worker used to show only that worker's share)."""
    gateway = GatewayProcess(write_config(), tmp_path / "gateway.log", "--workers", "2")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    connector = aiohttp.TCPConnector(force_close=True)  # new connection: any worker
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(30):
            async with session.get(gateway.url + "/api") as response:
                assert response.status == 401  # no token
        await asyncio.sleep(1.5)  # a worker publishes its counters once a second
        scraped = []
        for _ in range(8):
            async with session.get(gateway.url + "/metrics") as response:
                text = await response.text()
            scraped.append(re.search(r'gateway_requests_total\{status="401"\} (\S+)', text))
    counts = [float(match.group(1)) if match else 0.0 for match in scraped]
    assert counts == [30.0] * 8, counts
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.wait) == 0
    assert gateway.process is not None
    assert not (tmp_path / "data" / "worker-metrics" / str(gateway.process.pid)).exists()
    answering = {line.split("[")[1].split("]")[0] for line in gateway.logs().splitlines()
                 if "path=/api " in line and "status=401" in line}
    assert len(answering) == 2, "both workers answered some of the requests"


async def test_workers_refuse_a_port_another_gateway_holds(
        write_config: Callable[..., Path], tmp_path: Path,
        processes: list[GatewayProcess]) -> None:
    """--workers never silently shares its port with a gateway already serving there."""
    config = write_config()
    first = GatewayProcess(config, tmp_path / "first.log", "--workers", "2")
    processes.append(first)
    first.start()
    await first.wait_ready()
    second = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "serve", "-c", str(config),
                         "--workers", "2"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert second.returncode == 1
    assert "address already in use" in second.stderr
    assert "Traceback" not in second.stderr


@pytest.mark.parametrize("count", ["0", "-3", "65"])
async def test_workers_count_must_be_sensible(tmp_path: Path, count: str) -> None:
    """--workers takes 1 to 64; anything else is a usage error, not a silent fallback."""
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "serve", "--workers", count],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "--workers" in result.stderr


async def test_access_log_times_sub_millisecond_answers_finely(
        write_config: Callable[..., Path], tmp_path: Path,
        processes: list[GatewayProcess]) -> None:
    """Under uvloop (whose loop clock counts whole milliseconds) the access log still
    times requests served by aiohttp's handler to a fraction of a millisecond."""
    gateway = GatewayProcess(write_config(access_log="all"), tmp_path / "gateway.log")
    processes.append(gateway)
    gateway.start()
    await gateway.wait_ready()
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(gateway.url + "/healthz") as response:
                assert response.status == 200

    def durations() -> list[float]:  # a line is written just after its answer went out
        return [float(match) for match in re.findall(
            r"path=/healthz status=200 duration_ms=([0-9.]+)", gateway.logs())]

    await wait_until(lambda: len(durations()) == 20, 5.0, "20 access log lines")
    # each a whole number of ms with a millisecond clock; 20 at once by chance: ~1e-40
    assert any(not duration.is_integer() for duration in durations()), durations()

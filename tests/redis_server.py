"""A private, throw-away redis-server for fault tests: kill it, freeze it, bring it back.

It listens on a free loopback port, keeps nothing on disk, and survives restarts on that port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from types import TracebackType

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_DEADLINE = 10.0
REQUIRE_REDIS = os.environ.get("GATEWAY_TEST_REQUIRE_REDIS") == "1"


def redis_unavailable(reason: str) -> None:
    """Skip, unless CI demands Redis: then a missing Redis is a failure, not a skip."""
    import pytest

    if REQUIRE_REDIS:
        pytest.fail(f"{reason} (GATEWAY_TEST_REQUIRE_REDIS=1)")
    pytest.skip(reason)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def is_answering(port: int, timeout: float = 0.2) -> bool:
    """True when something on `port` answers a RESP `PING` with `+PONG`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One `redis-server` subprocess on a fixed loopback port, started by `start()`."""

    def __init__(self, port: int | None = None, binary: str = REDIS_SERVER) -> None:
        self.port = port or free_port()
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (with a deadline) until it answers PING."""
        if self._process is not None:
            raise RuntimeError("redis-server already running")
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_DEADLINE
        while not is_answering(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not come up on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (no goodbye to clients) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=START_DEADLINE)
        self._stopped = False

    def stop(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing."""
        self._signal(signal.SIGSTOP)
        self._stopped = True

    def cont(self) -> None:
        """SIGCONT: undo `stop()`."""
        self._signal(signal.SIGCONT)
        self._stopped = False

    def restart(self) -> None:
        """Kill and start again on the same port, empty."""
        self.kill()
        self.start()

    def close(self) -> None:
        """Always safe: resume a frozen server so the kill is reaped, then kill it."""
        if self._stopped:
            self.cont()
        self.kill()

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            raise RuntimeError("redis-server is not running")
        self._process.send_signal(signum)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

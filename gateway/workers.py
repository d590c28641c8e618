"""`--workers N`: N gateway processes on one port (SO_REUSEPORT), supervised by this one.

Each worker is a plain `gateway serve --workers 1 --reuse-port` child. Workers share
revocations through the store: SQLite by following the database's change feed, Redis by
pub/sub. The supervisor forwards SIGTERM/SIGINT, restarts a worker that dies, and exits 0
once all workers have drained.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from gateway.worker_metrics import metrics_directory, remove_directory

log = logging.getLogger(__name__)
RESTART_PAUSE = 1.0


def _spawn(config_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config_path),
               "--workers", "1", "--reuse-port"]
    # The worker compares its parent with this pid, so a supervisor killed even before
    # the worker started is still noticed.
    env = {**os.environ, "GATEWAY_SUPERVISOR_PID": str(os.getpid())}
    return subprocess.Popen(command, env=env)  # noqa: S603 - our own interpreter and module


def is_port_free(host: str, port: int) -> bool:
    """True when nothing holds `host:port`, checked with a plain bind (no SO_REUSEPORT).

    Workers share the port with SO_REUSEPORT, which would also let them silently share it
    with another gateway already running there; this check refuses that at start-up.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run_workers(config_path: Path, count: int, data_dir: Path) -> int:
    """Run `count` workers until told to stop; returns the exit code."""
    shared_metrics = metrics_directory(data_dir, os.getpid())
    remove_directory(shared_metrics)
    try:
        return _supervise(config_path, count)
    finally:
        remove_directory(shared_metrics)


def _supervise(config_path: Path, count: int) -> int:
    stopping = False
    told: set[int] = set()  # pids already sent SIGTERM

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _terminate(children, told)

    children = [_spawn(config_path) for _ in range(count)]
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("workers_started count=%s pids=%s", count, [c.pid for c in children])
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            code = child.poll()
            if code is not None and not stopping:
                log.error("worker_died pid=%s code=%s; restarting", child.pid, code)
                time.sleep(RESTART_PAUSE)
                if not stopping:
                    children[index] = _spawn(config_path)
    # A stop that came while a worker was being spawned missed that worker.
    _terminate(children, told)
    codes = [child.wait() for child in children]
    for child, code in zip(children, codes, strict=True):
        if code != 0:
            log.error("worker_failed pid=%s code=%s", child.pid, code)
    return 0 if all(code == 0 for code in codes) else 1


def _terminate(children: list[subprocess.Popen[bytes]], told: set[int]) -> None:
    """SIGTERM each worker once: a second one could arrive after the worker's drain has
    put the default handler back, and kill it (exit -15) at the very end of a clean stop."""
    for child in children:
        if child.pid not in told:
            told.add(child.pid)
            child.send_signal(signal.SIGTERM)  # skips a child already reaped

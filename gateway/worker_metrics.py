"""`/metrics` under `--workers`: every worker answers a scrape with all workers' counters.

The workers share one port (SO_REUSEPORT), so a scrape reaches whichever worker the kernel
picks; with per-process counters each scrape showed a different worker and Prometheus read
the jumps as counter resets. Each worker writes its counters to a file of its own once a
second (atomically, off the request path) in a directory private to its supervisor, and a
scrape adds the other workers' latest files to its own live counters: totals lag by up to
`PUBLISH_INTERVAL` and never go down, also across a worker's restart (a dead worker's
file stays until the supervisor exits).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

from gateway.observability import Metrics, Snapshot

log = logging.getLogger(__name__)
PUBLISH_INTERVAL = 1.0


def metrics_directory(data_dir: Path, supervisor_pid: int) -> Path:
    """Where the workers of one supervisor publish their counters."""
    return data_dir / "worker-metrics" / str(supervisor_pid)


def remove_directory(directory: Path) -> None:
    """The supervisor clears its workers' files when it starts and when it exits."""
    shutil.rmtree(directory, ignore_errors=True)


class WorkerMetrics:
    """One worker's side: publish its counters, read the other workers'."""

    def __init__(self, directory: Path, metrics: Metrics) -> None:
        self._directory = directory
        self._metrics = metrics
        self._own = directory / f"{os.getpid()}.json"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        metrics.peer_snapshots = self.peers

    def publish(self) -> None:
        staging = self._own.with_suffix(".tmp")
        staging.write_text(json.dumps(self._metrics.snapshot()))
        os.replace(staging, self._own)  # a reader never sees half a file

    def peers(self) -> list[Snapshot]:
        """The latest counters of every other worker (an unreadable file is skipped)."""
        snapshots = []
        for path in self._directory.glob("*.json"):
            if path == self._own:
                continue
            try:
                snapshots.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                log.warning("worker_metrics_unreadable file=%s", path.name)
        return snapshots

    async def publish_forever(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            try:
                self.publish()
            except OSError as exc:
                log.warning("worker_metrics_not_published error=%s", exc.strerror)

"""Counters summed across workers (gateway/worker_metrics.py), on real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import Metrics
from gateway.worker_metrics import WorkerMetrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples}


def test_a_scrape_sums_every_workers_counters_and_keeps_its_own_gauge(tmp_path: Path) -> None:
    other = Metrics()
    other.observe(200, 0.002)
    other.observe(401, 0.0003)
    other.logins["failed"] += 2
    (tmp_path / "99999.json").write_text(json.dumps(other.snapshot()))
    mine = Metrics()
    mine.observe(200, 0.004)
    mine.upstream_errors["timeout"] += 1
    mine.revocation_entries = lambda: 7
    WorkerMetrics(tmp_path, mine)
    shown = samples(mine)
    assert shown[("gateway_requests_total", (("status", "200"),))] == 2
    assert shown[("gateway_requests_total", (("status", "401"),))] == 1
    assert shown[("gateway_logins_total", (("result", "failed"),))] == 2
    assert shown[("gateway_upstream_errors_total", (("kind", "timeout"),))] == 1
    assert shown[("gateway_request_duration_seconds_count", ())] == 3
    assert shown[("gateway_request_duration_seconds_bucket", (("le", "0.0025"),))] == 2
    assert abs(shown[("gateway_request_duration_seconds_sum", ())] - 0.0063) < 1e-9
    assert shown[("gateway_revocation_cache_entries", ())] == 7  # this process's, not a sum


def test_a_worker_reads_its_peers_not_its_own_file(tmp_path: Path) -> None:
    mine = Metrics()
    shared = WorkerMetrics(tmp_path, mine)
    mine.observe(200, 0.001)
    shared.publish()
    assert (tmp_path / f"{os.getpid()}.json").exists()
    assert shared.peers() == []  # its own live counters are not counted twice
    (tmp_path / "12345.json").write_text("{not json")
    assert shared.peers() == []  # an unreadable peer file is skipped, not a 500
    assert samples(mine)[("gateway_requests_total", (("status", "200"),))] == 1

"""Logging set-up, metrics, the access log, and what /metrics exposes.

The hot path only bumps plain counters; prometheus_client turns them into the exposition
format at scrape time (a custom collector), so no metric costs a lock or a label lookup
per request.
"""

from __future__ import annotations

import bisect
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any, Literal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATION_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
AccessLogMode = Literal["all", "errors", "off"]
Snapshot = dict[str, Any]  # Metrics.snapshot(): counters as JSON-ready data


def configure_logging(level: str) -> None:
    """Log lines `event key=value` to stderr."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT, force=True)
    install_log_filters()


def install_log_filters() -> None:
    """Keep request bytes out of aiohttp's own log lines (idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its parser refused with a traceback quoting the bad line,
    which may hold a whole token or a query string. Keep one line with the error's name.

    SECURITY: DESIGN §5 - never log a whole token.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "request_rejected_by_parser error=%s", (
                type(error).__name__,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class Metrics:
    """Counters the gateway bumps as it works; rendered for Prometheus on demand."""

    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()
        self.logins: Counter[str] = Counter()
        self.revocations: Counter[str] = Counter()
        self.upstream_errors: Counter[str] = Counter()
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0
        self.revocation_entries: Callable[[], int] = lambda: 0
        # The other workers' counters under `--workers` (gateway.worker_metrics), summed
        # into every scrape; none for a single process.
        self.peer_snapshots: Callable[[], list[Snapshot]] = list

    def observe(self, status: int, seconds: float) -> None:
        """One answered request: its status and how long it took."""
        self.requests[status] += 1
        self._buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._duration_sum += seconds

    def collect(self) -> Iterator[Metric]:
        """prometheus_client collector protocol."""
        requests = CounterMetricFamily("gateway_requests", "Requests answered, by status.",
                                       labels=["status"])
        for status, count in sorted(self.requests.items()):
            requests.add_metric([str(status)], count)
        yield requests
        yield self._histogram()
        for name, text, label, counts in (
                ("gateway_logins", "Login attempts by result.", "result", self.logins),
                ("gateway_revocations", "Revocations stored, by kind.", "kind",
                 self.revocations),
                ("gateway_upstream_errors", "Upstream failures, by kind.", "kind",
                 self.upstream_errors)):
            family = CounterMetricFamily(name, text, labels=[label])
            for key, count in sorted(counts.items()):
                family.add_metric([key], count)
            yield family
        yield GaugeMetricFamily("gateway_revocation_cache_entries",
                                "Live revocations held in this process.",
                                value=self.revocation_entries())

    def _histogram(self) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self._buckets, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
        return HistogramMetricFamily("gateway_request_duration_seconds",
                                     "Time to answer a request.", buckets=cumulative,
                                     sum_value=self._duration_sum)

    def snapshot(self) -> Snapshot:
        """The counters as JSON-ready data (what a worker publishes to the others)."""
        return {"requests": {str(k): v for k, v in self.requests.items()},
                "logins": dict(self.logins), "revocations": dict(self.revocations),
                "upstream_errors": dict(self.upstream_errors),
                "buckets": list(self._buckets), "duration_sum": self._duration_sum}

    def add(self, snapshot: Snapshot) -> None:
        """Add another process's counters to these."""
        self.requests.update({int(k): v for k, v in snapshot["requests"].items()})
        self.logins.update(snapshot["logins"])
        self.revocations.update(snapshot["revocations"])
        self.upstream_errors.update(snapshot["upstream_errors"])
        self._buckets = [a + b for a, b in zip(self._buckets, snapshot["buckets"],
                                               strict=True)]
        self._duration_sum += snapshot["duration_sum"]

    def render(self) -> bytes:
        """Prometheus text of this process's counters plus its peers' (under --workers)."""
        peers = self.peer_snapshots()
        shown = self
        if peers:
            shown = Metrics()
            shown.revocation_entries = self.revocation_entries  # a gauge of this process
            for snapshot in (self.snapshot(), *peers):
                shown.add(snapshot)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(shown)
        return generate_latest(registry)


# When the gateway's handler began a request (time.perf_counter): aiohttp's own duration
# comes from the loop clock, which is whole milliseconds on uvloop. Defined here, not in
# gateway.keys, which imports the modules that import this one.
request_started_key = web.RequestKey("request_started", float)


class AccessLogger(AbstractAccessLogger):
    """One line per request: no query string (it may carry secrets), never a header.

    `access_log: errors` (the default) logs only answers of 400 and above, so the success
    path formats nothing.
    """

    mode: AccessLogMode = "errors"

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        started = request.get(request_started_key)
        seconds = time if started is None else perf_counter() - started
        log_access(self.logger, self.mode, request.method, request.raw_path, response.status,
                   seconds, request.remote, response.headers.get("X-Request-Id", "-"))

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.logger.isEnabledFor(logging.INFO)


def log_access(logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
               mode: AccessLogMode, method: str, raw_path: str, status: int, seconds: float,
               peer: str | None, request_id: str) -> None:
    """The access line of one answered request (both serving paths write it here)."""
    if mode == "off" or (mode == "errors" and status < 400):
        return
    logger.info("request method=%s path=%s status=%s duration_ms=%.2f peer=%s request_id=%s",
                method, raw_path.partition("?")[0][:256], status, seconds * 1000, peer,
                request_id)


def access_logger_class(mode: AccessLogMode) -> type[AccessLogger]:
    """An AccessLogger subclass fixed to `mode` (aiohttp instantiates the class itself)."""
    return type("ConfiguredAccessLogger", (AccessLogger,), {"mode": mode})

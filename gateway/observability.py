"""Logging set-up, Prometheus metrics, the access log, and /healthz /readyz /metrics."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Log lines `event key=value` to stderr."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT, force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)


@dataclass(frozen=True, slots=True, eq=False)
class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own (one per app)."""

    registry: CollectorRegistry
    requests: Counter
    duration: Histogram
    logins: Counter
    revocations: Counter
    upstream_errors: Counter
    revocation_entries: Gauge

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("gateway_requests", "Requests answered, by kind and status.",
                             ["kind", "status"], registry=registry),
            duration=Histogram("gateway_request_duration_seconds",
                               "Time from request to response headers.", ["kind"],
                               registry=registry,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                        .5, 1, 2.5, 5, 10)),
            logins=Counter("gateway_logins", "Login attempts by result.", ["result"],
                           registry=registry),
            revocations=Counter("gateway_revocations", "Revocations stored, by kind.",
                                ["kind"], registry=registry),
            upstream_errors=Counter("gateway_upstream_errors",
                                    "Upstream failures, by kind.", ["kind"],
                                    registry=registry),
            revocation_entries=Gauge("gateway_revocation_cache_entries",
                                     "Live revocations held in this process.",
                                     registry=registry),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class AccessLogger(AbstractAccessLogger):
    """One line per request: no query string (it may carry secrets), never a header."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "request method=%s path=%s status=%s duration_ms=%.2f peer=%s request_id=%s",
            request.method, request.raw_path.partition("?")[0][:256], response.status,
            time * 1000, request.remote, response.headers.get("X-Request-Id", "-"))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

"""The gateway's runtime parts, built once per app and shared by every handler."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import ClientSession

from gateway.clock import Clock
from gateway.config import Config
from gateway.observability import Metrics
from gateway.ratelimit import FailureLimiter
from gateway.revocation import RevocationStore
from gateway.routing import RouteTable
from gateway.tokens import SigningKeys, TokenIssuer, TokenVerifier
from gateway.upstream import UpstreamPool
from gateway.users import PasswordChecker


@dataclass(slots=True, eq=False)
class Services:
    """Everything a handler needs; `session` and `pool` exist only while the app runs."""

    config: Config
    clock: Clock
    keys: SigningKeys
    issuer: TokenIssuer
    verifier: TokenVerifier
    revocations: RevocationStore
    passwords: PasswordChecker
    login_limiter: FailureLimiter
    routes: RouteTable
    metrics: Metrics
    session: ClientSession | None = None
    pool: UpstreamPool | None = None

"""Wire configuration, stores and handlers into the gateway's one request handler (DESIGN §1).

`create_gateway()` builds a `Gateway`: `gateway serve` runs its handler on aiohttp's
low-level server; `create_app()` wraps the same handler in a `web.Application`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway import auth_api
from gateway.authentication import authenticate, authenticate_of, authenticate_optional
from gateway.clock import Clock
from gateway.config import Config, Route, Secret
from gateway.errors import BadRequestError, MethodNotAllowedError, NotFoundError
from gateway.headers import upstream_fields
from gateway.keys import request_id_key, services_key
from gateway.middleware import with_request_handling
from gateway.observability import METRICS_CONTENT_TYPE, Metrics, install_log_filters
from gateway.proxy import (
    create_client_session,
    create_upstream_pool,
    forward,
)
from gateway.ratelimit import FailureLimiter
from gateway.revocation import RevocationStore
from gateway.routing import RouteTable, normalise_path, upstream_of, upstream_target
from gateway.services import Services
from gateway.tokens import Claims, TokenIssuer, TokenVerifier, load_signing_keys
from gateway.users import CredentialStore, PasswordChecker, build_credentials
from gateway.websocket import is_websocket_upgrade, proxy_websocket

# RFC 3986 host (reg-name, IPv4 or [IPv6]) with an optional port; no userinfo, path or query.
_VALID_HOST = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
LocalHandler = Callable[[web.BaseRequest, Services], Awaitable[web.StreamResponse]]


async def healthz(request: web.BaseRequest, services: Services) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.BaseRequest, services: Services) -> web.Response:
    """Ready when the revocation store is usable; 503 with the reason otherwise."""
    status = services.revocations.status()
    body = {"status": "ready" if status.ready else "not_ready", "revocations": status.detail}
    return web.json_response(body, status=200 if status.ready else 503)


async def metrics(request: web.BaseRequest, services: Services) -> web.Response:
    """Prometheus text exposition."""
    return web.Response(body=services.metrics.render(),
                        headers={"Content-Type": METRICS_CONTENT_TYPE})


async def jwks(request: web.BaseRequest, services: Services) -> web.Response:
    """Public verification keys (RFC 7517); empty for shared-secret algorithms."""
    return web.json_response(services.keys.jwks())


async def verify(request: web.BaseRequest, services: Services) -> web.Response:
    """Forward-auth for other proxies: 204 with the identity header for a valid token."""
    claims = authenticate(services, request.headers)
    return web.Response(status=204, headers={services.config.identity_header: claims.subject})


LOCAL_ENDPOINTS: dict[str, tuple[frozenset[str], LocalHandler]] = {
    "/user/login": (frozenset({"POST"}), auth_api.login),
    "/user/logout": (frozenset({"POST"}), auth_api.logout),
    "/user/logout_all": (frozenset({"POST"}), auth_api.logout_all),
    "/healthz": (frozenset({"GET", "HEAD"}), healthz),
    "/readyz": (frozenset({"GET", "HEAD"}), readyz),
    "/metrics": (frozenset({"GET", "HEAD"}), metrics),
    "/.well-known/jwks.json": (frozenset({"GET", "HEAD"}), jwks),
    "/auth/verify": (frozenset({"GET", "HEAD", "POST"}), verify),
}


async def dispatch(request: web.BaseRequest, services: Services) -> web.StreamResponse:
    """Every request: normalise the path, then serve it locally or proxy it."""
    path, query = normalise_path(request.raw_path)
    local = LOCAL_ENDPOINTS.get(path)
    if local is not None:
        methods, handler = local
        if request.method not in methods:
            raise MethodNotAllowedError(", ".join(sorted(methods)))
        return await handler(request, services)
    return await proxy_request(request, services, path, query)


async def proxy_request(request: web.BaseRequest, services: Services, path: str,
                        query: str) -> web.StreamResponse:
    """DESIGN §1: route match -> authenticate -> build headers -> stream upstream."""
    route = services.routes.match(path)
    if route is None:
        raise NotFoundError()
    headers = request.headers
    plan = plan_forward(services, route, path, query, list(headers.items()),
                        authorization=headers.getall("Authorization", []),
                        host=headers.get("Host"),
                        websocket=is_websocket_upgrade(headers, request.method),
                        peer=request.remote, scheme=request.scheme,
                        request_id=request[request_id_key])
    upstream_headers = CIMultiDict(plan.fields)
    if plan.websocket:
        url = URL(upstream_of(route).origin + plan.target, encoded=True)
        return await proxy_websocket(request, services, url, upstream_headers, plan.claims)
    return await forward(request, services, route, plan.target, upstream_headers)


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    """What to send upstream for one request, decided before any byte goes out."""

    claims: Claims | None
    target: str                       # path and query on the upstream
    fields: list[tuple[str, str]]     # the upstream request's headers, in order
    websocket: bool


def plan_forward(services: Services, route: Route, path: str, query: str,
                 fields: list[tuple[str, str]], *, authorization: list[str],
                 host: str | None, websocket: bool, peer: str | None, scheme: str,
                 request_id: str) -> ForwardPlan:
    """Authenticate for `route` and build the upstream request (shared by aiohttp's
    handler and the fast path, so both apply exactly the same rules).

    `authorization` holds the request's Authorization values and `host` its Host.
    """
    claims = _identify(services, route, authorization)
    _check_host(host)
    upstream = upstream_fields(
        fields,
        identity=claims.subject if claims is not None else None,
        identity_header=services.config.identity_header,
        forward_authorization=route.forward_authorization,
        peer=peer, scheme=scheme, host=host, request_id=request_id, websocket=websocket)
    return ForwardPlan(claims, upstream_target(route, path, query), upstream, websocket)


def _identify(services: Services, route: Route, authorization: list[str]) -> Claims | None:
    """The caller's claims as the route's `auth` mode asks for them (401 when required)."""
    if route.auth == "required":
        return authenticate_of(services, authorization)
    if route.auth == "optional":
        return authenticate_optional(services, authorization)
    return None


def _check_host(host: str | None) -> None:
    """SECURITY: RFC 9112 §3.2 - an invalid Host is a 400, never passed on upstream as
    X-Forwarded-Host (where it could poison links or caches)."""
    if host is not None and not _VALID_HOST.fullmatch(host):
        raise BadRequestError("The Host header is not a valid host[:port].")


def build_revocation_store(config: Config, clock: Clock) -> RevocationStore:
    """The store named by `revocation.store`."""
    rev = config.revocation
    if rev.store == "memory":
        from gateway.revocation.memory import MemoryRevocationStore
        return MemoryRevocationStore(clock=clock, max_entries=rev.max_entries)
    if rev.store == "redis":
        from gateway.revocation.redis import RedisRevocationStore
        assert rev.url is not None  # noqa: S101 - config validated it
        return RedisRevocationStore(
            rev.url, clock=clock, max_staleness=rev.max_staleness,
            longest_token_lifetime=config.tokens.ttl + config.tokens.leeway)
    from gateway.revocation.sqlite import SqliteRevocationStore
    return SqliteRevocationStore(rev.path, clock=clock, sync_interval=rev.sync_interval,
                                 max_staleness=rev.max_staleness)


class Gateway:
    """The gateway's parts and its one request handler.

    `handle` serves every request; `start()`/`close()` open and close the revocation store
    and the upstream clients. `gateway serve` runs `handle` on aiohttp's low-level server
    (no router, no middleware layers: the gateway routes by itself); `application()` wraps
    the same handler in a `web.Application` for embedding and for tests.
    """

    def __init__(self, services: Services) -> None:
        self.services = services

        async def handle_one(request: web.BaseRequest) -> web.StreamResponse:
            return await dispatch(request, services)

        self.handle = with_request_handling(handle_one, services.metrics)

    async def start(self) -> None:
        services = self.services
        await services.revocations.start()
        services.session = create_client_session(services.config)
        if services.config.upstream_client == "fast":
            services.pool = create_upstream_pool(services.config)

    async def close(self) -> None:
        services = self.services
        if services.pool is not None:
            await services.pool.close()
        if services.session is not None:
            await services.session.close()
        await services.revocations.close()
        services.passwords.close()

    def server_options(self) -> dict[str, object]:
        """Options for aiohttp's HTTP protocol, the same on every serving path."""
        # SECURITY: aiohttp inflates gzip/deflate request bodies by default; forwarding the
        # inflated bytes under the client's Content-Length and Content-Encoding would let
        # one request smuggle another. The gateway never decompresses, in either direction.
        return {"auto_decompress": False,
                "keepalive_timeout": self.services.config.listen.keepalive_timeout}

    def application(self) -> web.Application:
        app = web.Application(handler_args=self.server_options())
        app[services_key] = self.services
        app.cleanup_ctx.append(self._lifecycle)
        # One route for every path (newlines too); dispatch() serves or proxies it.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle,
                             expect_handler=_leave_expect_to_the_gateway)
        return app

    async def _lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.close()


async def _leave_expect_to_the_gateway(request: web.Request) -> None:
    """aiohttp's router would answer 100-continue before authentication; the gateway
    answers it itself when it starts reading the body (gateway.request_body)."""


def create_gateway(config: Config, *, clock: Clock = time.time, secret: Secret | None = None,
                   revocations: RevocationStore | None = None,
                   credentials: CredentialStore | None = None) -> Gateway:
    """Build the gateway; parts not passed in are built from `config`."""
    # SECURITY: DESIGN §5 - the embedded form too: aiohttp's parser errors quote the bad
    # header line (a whole token) unless filtered; `gateway serve` installed it alone.
    install_log_filters()
    keys = load_signing_keys(config.tokens, secret or config.tokens.secret)
    store = revocations if revocations is not None else build_revocation_store(config, clock)
    services = Services(
        config=config, clock=clock, keys=keys,
        issuer=TokenIssuer(config.tokens, keys, clock),
        verifier=TokenVerifier(config.tokens, keys, clock),
        revocations=store,
        passwords=PasswordChecker(credentials or build_credentials(config.users)),
        login_limiter=FailureLimiter(config.login_limit.max_failures,
                                     config.login_limit.window, clock),
        routes=RouteTable(config.routes),
        metrics=Metrics(),
    )
    services.metrics.revocation_entries = lambda: len(getattr(store, "cache", ()))
    return Gateway(services)


def create_app(config: Config, *, clock: Clock = time.time, secret: Secret | None = None,
               revocations: RevocationStore | None = None,
               credentials: CredentialStore | None = None) -> web.Application:
    """The gateway as a `web.Application` (see `Gateway.application`)."""
    return create_gateway(config, clock=clock, secret=secret, revocations=revocations,
                          credentials=credentials).application()

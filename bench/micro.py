"""Micro-benchmark of the gateway's per-request auth path, in nanoseconds per call.

Measures the pieces every proxied request runs (DESIGN §1): token verification cold (PyJWT:
signature and claims) and warm (a verified-token cache hit), the revocation check against
1,000,000 live entries, path normalisation, the route match and the upstream header build,
then the whole chain in one call. Each figure is the best of several `timeit` repeats.

    python -m bench.micro [--quick] [--out bench/results/micro.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import jwt
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import Route, Secret, Tokens
from gateway.headers import build_upstream_headers
from gateway.revocation import RevocationCache
from gateway.routing import RouteTable, normalise_path
from gateway.tokens import TokenIssuer, TokenVerifier, load_signing_keys

RESULTS = Path(__file__).resolve().parent / "results"
REVOCATIONS = 1_000_000


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    ns_per_call: float
    calls: int
    note: str = ""


def best_ns(fn: Callable[[], object], number: int, repeat: int) -> float:
    """The fastest of `repeat` timings of `number` calls, in ns per call."""
    timings = timeit.repeat(fn, number=number, repeat=repeat)
    return min(timings) / number * 1e9


@dataclass(slots=True)
class Fixture:
    """A verifier, a revocation cache, a route table and a request, as the gateway has them."""

    secret: str
    tokens: Tokens
    issuer: TokenIssuer
    verifier: TokenVerifier
    token: str
    cache: RevocationCache
    revoked_jti: str
    routes: RouteTable
    headers: CIMultiDictProxy[str]
    path: str

    @classmethod
    def create(cls, revocations: int) -> Fixture:
        secret = secrets.token_hex(32)
        tokens = Tokens.model_validate({"secret": secret, "ttl": "24h", "leeway": "30s"})
        keys = load_signing_keys(tokens, Secret(secret))
        issuer = TokenIssuer(tokens, keys, time.time)
        token, _ = issuer.issue("bench")
        cache = RevocationCache()
        expires_at = time.time() + 24 * 3600
        revoked_jti = secrets.token_urlsafe(16)
        cache.add_token(revoked_jti, expires_at)
        for _ in range(revocations - 1):
            cache.add_token(secrets.token_urlsafe(16), expires_at)
        routes = RouteTable(Route.model_validate({"prefix": prefix, "auth": auth,
                                                  "upstream": "http://127.0.0.1:9000"})
                            for prefix, auth in (("/", "required"), ("/public", "none"),
                                                 ("/api/v1", "required"), ("/api/v2", "required"),
                                                 ("/static", "none"), ("/admin", "required")))
        headers = CIMultiDictProxy(CIMultiDict({
            "Host": "api.example.com", "User-Agent": "wrk/4.2", "Accept": "*/*",
            "Accept-Encoding": "gzip", "Authorization": f"Bearer {token}",
            "X-Forwarded-For": "10.0.0.1", "Connection": "keep-alive",
            "Content-Type": "application/json"}))
        return cls(secret, tokens, issuer, TokenVerifier(tokens, keys, time.time), token,
                   cache, revoked_jti, routes, headers, "/api/v1/users/42?page=2")

    def new_verifier(self) -> TokenVerifier:
        keys = load_signing_keys(self.tokens, Secret(self.secret))
        return TokenVerifier(self.tokens, keys, time.time)


def verify_cold(fx: Fixture, count: int, repeat: int) -> Measure:
    """Distinct tokens through a fresh verifier: every call misses the cache."""
    best = float("inf")
    for _ in range(repeat):
        tokens = [fx.issuer.issue("bench")[0] for _ in range(count)]
        verifier = fx.new_verifier()
        start = time.perf_counter_ns()
        for token in tokens:
            verifier.verify(token)
        best = min(best, (time.perf_counter_ns() - start) / count)
    return Measure("TokenVerifier.verify cold (PyJWT)", best, count,
                   "distinct tokens, empty cache")


def pyjwt_decode(fx: Fixture, number: int, repeat: int) -> Measure:
    options = {"require": ["iss", "sub", "iat", "exp", "jti"]}

    def decode() -> object:
        return jwt.decode(fx.token, fx.secret, algorithms=["HS256"], issuer="gateway",
                          options=options)  # type: ignore[arg-type]
    return Measure("jwt.decode (PyJWT alone)", best_ns(decode, number, repeat), number,
                   "what the naive proxy does per request")


def auth_chain(fx: Fixture) -> Callable[[], object]:
    """The whole per-request path: path, route, bearer, verify, revocation, headers."""
    verifier, cache, routes, headers = fx.verifier, fx.cache, fx.routes, fx.headers

    def chain() -> object:
        path, _query = normalise_path(fx.path)
        routes.match(path)
        token = headers["Authorization"].partition(" ")[2]
        claims = verifier.verify(token)
        if cache.is_revoked(claims.token_id, claims.subject, claims.issued_at):
            raise AssertionError("the bench token is not revoked")
        return build_upstream_headers(
            headers, identity=claims.subject, identity_header="X-Auth-UserId",
            forward_authorization=False, peer="127.0.0.1", scheme="http",
            host=headers.get("Host"), request_id="0123456789abcdef")
    return chain


def measure_all(fx: Fixture, number: int, repeat: int, cold: int) -> list[Measure]:
    claims = fx.verifier.verify(fx.token)
    revoked = fx.revoked_jti
    cases: list[tuple[str, Callable[[], object], str]] = [
        ("TokenVerifier.verify warm (cache hit)", lambda: fx.verifier.verify(fx.token),
         "same token again"),
        (f"RevocationCache.is_revoked, {len(fx.cache):,} entries, miss",
         lambda: fx.cache.is_revoked(claims.token_id, claims.subject, claims.issued_at),
         "the common case: token not revoked"),
        (f"RevocationCache.is_revoked, {len(fx.cache):,} entries, hit",
         lambda: fx.cache.is_revoked(revoked, claims.subject, claims.issued_at), ""),
        (f"RevocationCache.purge, {len(fx.cache):,} live entries", lambda: fx.cache.purge(
            time.time()), "every 60 s; it walked every entry before (~90 ms for 1M)"),
        ("normalise_path, already normal", lambda: normalise_path(fx.path),
         fx.path),
        ("normalise_path, needs work", lambda: normalise_path("/api//v1/./users/%7Ejo/../42"),
         "/api//v1/./users/%7Ejo/../42"),
        ("RouteTable.match, 6 routes", lambda: fx.routes.match("/api/v1/users/42"),
         "/api/v1/users/42"),
        ("build_upstream_headers, 8 headers", lambda: build_upstream_headers(
            fx.headers, identity="bench", identity_header="X-Auth-UserId",
            forward_authorization=False, peer="127.0.0.1", scheme="http",
            host="api.example.com", request_id="0123456789abcdef"), ""),
        ("whole auth path (warm)", auth_chain(fx),
         "normalise + match + bearer + verify + is_revoked + headers"),
    ]
    results = [verify_cold(fx, cold, repeat), pyjwt_decode(fx, number // 20, repeat)]
    for name, fn, note in cases:
        results.append(Measure(name, best_ns(fn, number, repeat), number, note))
    return results


def print_table(results: list[Measure]) -> None:
    print(f"{'micro-benchmark':<52} {'per call':>12}  note")
    for m in results:
        shown = (f"{m.ns_per_call / 1000:.2f} us" if m.ns_per_call >= 1000
                 else f"{m.ns_per_call:.0f} ns")
        print(f"{m.name:<52} {shown:>12}  {m.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--out", type=Path, default=RESULTS / "micro.json")
    args = parser.parse_args(argv)
    number, repeat, cold = (20_000, 3, 500) if args.quick else (200_000, 5, 2_000)
    started = time.monotonic()
    fx = Fixture.create(REVOCATIONS)
    print(f"micro: {REVOCATIONS:,} revocations loaded in {time.monotonic() - started:.1f}s",
          flush=True)
    results = measure_all(fx, number, repeat, cold)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "python": sys.version.split()[0], "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "iterations": number, "repeat": repeat,
        "results": [{**asdict(m), "us_per_call": round(m.ns_per_call / 1000, 3)}
                    for m in results],
    }, indent=2) + "\n")
    print(f"micro: wrote {args.out} in {time.monotonic() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

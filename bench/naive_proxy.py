"""The naive reference: the authenticating proxy one writes first with aiohttp and PyJWT.

One aiohttp server, one `ClientSession`, `jwt.decode` on every request (no cache), the
token's `sub` sent upstream as `X-Auth-UserId`, the answer read whole and sent back. No
revocation check at all, so it does strictly less work per request than the gateway.

    BENCH_JWT_SECRET=... python -m bench.naive_proxy --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import aiohttp
import jwt
from aiohttp import web
from multidict import CIMultiDict

IDENTITY_HEADER = "X-Auth-UserId"
_DROPPED = frozenset({"host", "authorization", "connection", "keep-alive", "content-length",
                      "transfer-encoding", IDENTITY_HEADER.lower()})
session_key = web.AppKey("session", aiohttp.ClientSession)
settings_key = web.AppKey("settings", argparse.Namespace)


def _claims(request: web.Request, secret: str, issuer: str) -> dict[str, object] | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        claims: dict[str, object] = jwt.decode(
            token, secret, algorithms=["HS256"], issuer=issuer,
            options={"require": ["iss", "sub", "iat", "exp", "jti"]})
    except jwt.InvalidTokenError:
        return None
    return claims


async def proxy(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    claims = _claims(request, settings.secret, settings.issuer)
    if claims is None:
        return web.Response(status=401, text='{"error": "unauthorized"}',
                            content_type="application/json")
    headers = CIMultiDict((k, v) for k, v in request.headers.items()
                          if k.lower() not in _DROPPED)
    headers[IDENTITY_HEADER] = str(claims["sub"])
    async with request.app[session_key].request(
            request.method, settings.upstream + request.path_qs, headers=headers,
            data=await request.read(), allow_redirects=False) as answer:
        body = await answer.read()
        out = CIMultiDict((k, v) for k, v in answer.headers.items()
                          if k.lower() not in _DROPPED)
        return web.Response(status=answer.status, body=body, headers=out)


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[session_key] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app[session_key].close()


def create_app(settings: argparse.Namespace) -> web.Application:
    app = web.Application()
    app[settings_key] = settings
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--secret", default=os.environ.get("BENCH_JWT_SECRET"),
                        help="HS256 secret (default: $BENCH_JWT_SECRET)")
    parser.add_argument("--issuer", default="gateway")
    args = parser.parse_args()
    if not args.secret:
        parser.error("no secret: pass --secret or set BENCH_JWT_SECRET")
    web.run_app(create_app(args), host=args.host, port=args.port, access_log=None,
                print=None, backlog=1024)


if __name__ == "__main__":
    main()

"""The fallback fast upstream when nginx is not installed: a minimal aiohttp app.

`GET /anything` answers `ok`; `GET /whoami` echoes the identity header the proxy injected,
so the benchmark can check that every authenticating proxy really sets it.

    python -m bench.upstream --port 9000
"""

from __future__ import annotations

import argparse

from aiohttp import web

IDENTITY_HEADER = "X-Auth-UserId"


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def whoami(request: web.Request) -> web.Response:
    return web.Response(text=request.headers.get(IDENTITY_HEADER, "-"))


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/whoami", whoami)
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None,
                print=None, backlog=1024)


if __name__ == "__main__":
    main()

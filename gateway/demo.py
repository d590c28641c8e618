"""A small echo upstream for the demo and the tests: it answers with what it received.

`python -m gateway.demo --port 8080` serves it on 127.0.0.1. Besides echoing any path it has
`/slow?seconds=N`, `/status/{n}`, `/stream?chunks=N`, `/die-mid-body` and `/ws`, which the tests
use to exercise timeouts, statuses, streaming and broken upstreams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from aiohttp import WSMsgType, web


async def echo(request: web.Request) -> web.Response:
    """JSON of the method, path_qs, headers (as pairs, in order) and body received."""
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "path_qs": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": body.decode("utf-8", errors="replace"),
        "body_length": len(body),
    })


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "5")))
    return web.json_response({"slow": True})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["n"])
    return web.Response(status=code, text="" if code in (204, 304) else f"status {code}")


async def stream(request: web.Request) -> web.StreamResponse:
    """Chunked answer: N chunks of `chunk-<i>\\n`, with a short pause between them."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(int(request.query.get("chunks", "5"))):
        await response.write(f"chunk-{i}\n".encode())
        await asyncio.sleep(float(request.query.get("pause", "0.01")))
    await response.write_eof()
    return response


async def die_mid_body(request: web.Request) -> web.StreamResponse:
    """Promise 1000 bytes, send 10, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Length": "1000"})
    await response.prepare(request)
    await response.write(b"0123456789")
    await asyncio.sleep(0.05)
    if request.transport is not None:
        request.transport.abort()
    return response


async def websocket_echo(request: web.Request) -> web.WebSocketResponse:
    """A websocket that first sends the headers it was opened with, then echoes frames."""
    ws = web.WebSocketResponse(protocols=("chat", "superchat"))
    await ws.prepare(request)
    await ws.send_json({"headers": [[k, v] for k, v in request.headers.items()],
                        "protocol": ws.ws_protocol})
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def create_echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/status/{n:\\d+}", status)
    app.router.add_route("*", "/stream", stream)
    app.router.add_route("*", "/die-mid-body", die_mid_body)
    app.router.add_get("/ws", websocket_echo)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Echo upstream for the gateway demo.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ready-file", type=Path, default=None,
                        help="created once the port is bound (make run waits for it)")
    args = parser.parse_args()

    def listening(_message: str) -> None:  # aiohttp calls it once the site is bound
        if args.ready_file is not None:
            args.ready_file.touch()

    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(create_echo_app(), host=args.host, port=args.port, print=listening)


if __name__ == "__main__":
    main()

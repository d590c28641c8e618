"""Start, check and stop every process the benchmark measures, all on 127.0.0.1.

Each proxy runs in its own process group (its own session) so that stopping it by pid also
stops whatever it forked (nginx workers, gateway worker processes). `Processes` is a context
manager: leaving it, normally, on an error or on Ctrl-C, stops every process it started.

Cores: every proxy is pinned to core 0 with `taskset -c 0` (`gateway --workers 2` gets
cores 0 and 1 and then shares core 1 with wrk); the upstream and wrk are pinned to core 1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROXY_CORE = "0"
LOAD_CORE = "1"
ISSUER = "gateway"
TTL = 24 * 3600
LEEWAY = 30
USER = "bench"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0


class Unavailable(Exception):
    """A configuration cannot run here (its binary is missing): reported as skipped."""


class StartError(RuntimeError):
    """A process did not come up; the message holds the tail of its log."""


@dataclass(frozen=True, slots=True)
class Target:
    """One configuration wrk drives."""

    name: str
    label: str
    port: int
    cores: str
    command: tuple[str, ...]
    auth: bool = False
    revoked_jti: str | None = None
    connections: tuple[int, ...] | None = None  # None: every connection count

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@dataclass(slots=True)
class Setup:
    """What every configuration shares: the work folder, the secret, the upstream."""

    workdir: Path
    secret: str
    password: str
    password_hash: str
    upstream_port: int = 0
    revoked: list[str] = field(default_factory=list)


# -- processes ----------------------------------------------------------------------------


@dataclass(slots=True)
class Process:
    name: str
    command: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Every process the benchmark started; all stopped by pid when the block ends."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._running: list[Process] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    def start(self, name: str, command: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path = REPO) -> Process:
        log = self._workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True)
        process = Process(name, tuple(command), popen, log)
        self._running.append(process)
        return process

    def exited(self) -> list[str]:
        """Names of started processes that are no longer running."""
        return [p.name for p in self._running if p.popen.poll() is not None]

    def stop_all(self) -> None:
        while self._running:
            stop(self._running.pop())


def stop(process: Process) -> None:
    """SIGTERM the process group led by the process's pid; SIGKILL it if it lingers."""
    pgid = process.popen.pid
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            process.popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure nothing it forked outlives it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        break


def log_tail(process: Process, lines: int = 15) -> str:
    try:
        text = process.log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_ready(process: Process, url: str, *, want_status: int | None = None,
               timeout: float = START_TIMEOUT) -> None:
    """Wait until `url` answers (with `want_status` when given) or the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise StartError(f"{process.name} exited with {process.popen.returncode}:\n"
                             f"{log_tail(process)}")
        try:
            status, _ = http_get(url, timeout=2.0)
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
            continue
        if want_status is None or status == want_status:
            return
        time.sleep(0.1)
    raise StartError(f"{process.name} not ready after {timeout:.0f}s:\n{log_tail(process)}")


def wait_for_log(process: Process, needle: str, count: int, timeout: float = 60.0) -> None:
    """Wait until `needle` appears `count` times in the process's log (every worker is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.log.read_text(errors="replace").count(needle) >= count:
            return
        time.sleep(0.2)
    print(f"warning: {process.name}: {count} x {needle.strip()!r} not logged in "
          f"{timeout:.0f}s; going on", file=sys.stderr)


def pinned(cores: str, command: Sequence[str]) -> tuple[str, ...]:
    return ("taskset", "-c", cores, *command)


def _binary(name: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()),
        None)
    if path is None:
        raise Unavailable(f"{name} is not installed")
    return path


def private_dir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)  # nginx workers drop privileges and must reach their temp paths
    return path


# -- revocations --------------------------------------------------------------------------


def random_jtis(count: int) -> list[str]:
    """`count` random token ids shaped like the gateway's (22 url-safe characters)."""
    raw = os.urandom(16 * count)
    return [base64.urlsafe_b64encode(raw[i:i + 16]).rstrip(b"=").decode()
            for i in range(0, 16 * count, 16)]


def fill_revocations(path: Path, jtis: Sequence[str]) -> None:
    """A revocation database with every jti live: the schema made by the gateway's store."""
    from gateway.revocation.sqlite import SqliteRevocationStore

    async def create_schema() -> None:
        store = SqliteRevocationStore(path, clock=time.time)
        await store.start()
        await store.close()

    asyncio.run(create_schema())
    expires_at = time.time() + TTL + LEEWAY
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO revocations (kind, key, cutoff, expires_at) VALUES ('token', ?, NULL, ?)",
            ((jti, expires_at) for jti in jtis))
    conn.close()


# -- the configurations -------------------------------------------------------------------

_NGINX_COMMON = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    default_type text/plain;
{body}
}}
"""

_NGINX_UPSTREAM = """    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /whoami {{ return 200 "$http_x_auth_userid"; }}
        location / {{ return 200 "ok"; }}
    }}"""

_NGINX_PROXY = """    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def _start_nginx(setup: Setup, procs: Processes, name: str, body: str,
                 port: int, cores: str) -> tuple[Process, tuple[str, ...]]:
    folder = private_dir(setup.workdir, name)
    conf = folder / "nginx.conf"
    conf.write_text(_NGINX_COMMON.format(dir=folder, body=body))
    command = pinned(cores, (_binary("nginx"), "-p", f"{folder}/", "-e",
                             f"{folder}/error.log", "-c", str(conf)))
    process = procs.start(name, command)
    wait_ready(process, f"http://127.0.0.1:{port}/", timeout=20)
    return process, command


def start_upstream(setup: Setup, procs: Processes, prefer: str) -> Target:
    """The fast upstream on core 1: nginx when installed (or asked for), else aiohttp."""
    port = free_port()
    setup.upstream_port = port
    if prefer != "python":
        try:
            body = _NGINX_UPSTREAM.format(port=port)
            _, command = _start_nginx(setup, procs, "upstream-nginx", body, port, LOAD_CORE)
            return Target("direct", "direct upstream (nginx)", port, LOAD_CORE, command)
        except Unavailable:
            if prefer == "nginx":
                raise
    command = pinned(LOAD_CORE, (sys.executable, "-m", "bench.upstream", "--port", str(port)))
    process = procs.start("upstream-python", command)
    wait_ready(process, f"http://127.0.0.1:{port}/", timeout=30)
    return Target("direct", "direct upstream (aiohttp)", port, LOAD_CORE, command)


def start_gateway(setup: Setup, procs: Processes, name: str, *, revocations: Sequence[str],
                  workers: int = 1, log_level: str = "info",
                  connections: tuple[int, ...] | None = None) -> Target:
    """`python -m gateway serve` with auth required on `/` and a pre-filled sqlite store."""
    folder = setup.workdir / name
    folder.mkdir(mode=0o700)
    db = folder / "revocations.db"
    fill_revocations(db, revocations)
    port = free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port, "workers": 1},
        "tokens": {"issuer": ISSUER, "algorithm": "HS256", "secret": setup.secret,
                   "ttl": f"{TTL}s", "leeway": f"{LEEWAY}s"},
        "users": {"inline": {USER: setup.password_hash}},
        "revocation": {"store": "sqlite", "path": str(db)},
        "data_dir": str(folder / "data"),
        "log_level": log_level,
        "routes": [{"prefix": "/", "upstream": f"http://127.0.0.1:{setup.upstream_port}",
                    "auth": "required"}],
    }
    config_path = folder / "gateway.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    cores = PROXY_CORE if workers == 1 else f"{PROXY_CORE},{LOAD_CORE}"
    serve = (sys.executable, "-m", "gateway", "serve", "-c", str(config_path))
    command = pinned(cores, (*serve, "--workers", str(workers)) if workers > 1 else serve)
    process = procs.start(name, command)
    wait_ready(process, f"http://127.0.0.1:{port}/readyz", want_status=200)
    if workers > 1:
        wait_for_log(process, " listening ", workers)
    count = f"{_short(len(revocations))} revocations"
    label = (f"gateway, {count}" if workers == 1
             else f"gateway --workers {workers} (cores 0+1), {_short(len(revocations))} rev.")
    return Target(name, label, port, cores, command, auth=True,
                  revoked_jti=revocations[0] if revocations else None,
                  connections=connections)


def _short(count: int) -> str:
    """100000 -> 100k, 1000000 -> 1M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if count >= size and count % size == 0:
            return f"{count // size}{suffix}"
    return f"{count:,}"


_HAPROXY = """global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend bench
    bind 127.0.0.1:{port}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str HS256 }}
    http-request set-var(txn.verified) var(txn.bearer),jwt_verify("HS256","{secret}")
    http-request deny deny_status 401 unless {{ var(txn.verified) -m int 1 }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request set-var(txn.jti) var(txn.bearer),jwt_payload_query('$.jti')
    http-request deny deny_status 401 unless {{ var(txn.jti) -m found }}
    http-request deny deny_status 401 if {{ var(txn.jti),map({jti_map}) -m found }}
    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('$.sub')
    http-request deny deny_status 401 unless {{ var(txn.sub) -m found }}
    http-request set-header X-Auth-UserId %[var(txn.sub)]
    default_backend upstream
backend upstream
    http-reuse always
    server up1 127.0.0.1:{upstream}
"""


def start_haproxy(setup: Setup, procs: Processes) -> Target:
    """HAProxy with `jwt_verify` (HS256), exp check, revoked-jti map, identity header."""
    binary = _binary("haproxy")
    folder = private_dir(setup.workdir, "haproxy")
    jti_map = folder / "revoked-jti.map"
    jti_map.write_text("".join(f"{jti} 1\n" for jti in setup.revoked))
    port = free_port()
    conf = folder / "haproxy.cfg"
    conf.write_text(_HAPROXY.format(port=port, secret=setup.secret, jti_map=jti_map,
                                    upstream=setup.upstream_port))
    command = pinned(PROXY_CORE, (binary, "-db", "-f", str(conf)))
    process = procs.start("haproxy", command)
    wait_ready(process, f"http://127.0.0.1:{port}/", timeout=30)
    return Target("haproxy-jwt", "HAProxy 2.6 jwt_verify + jti map", port, PROXY_CORE,
                  command, auth=True, revoked_jti=setup.revoked[0] if setup.revoked else None)


def start_nginx_proxy(setup: Setup, procs: Processes) -> Target:
    """nginx `proxy_pass` with a keep-alive upstream, no auth."""
    port = free_port()
    body = _NGINX_PROXY.format(port=port, upstream=setup.upstream_port)
    _, command = _start_nginx(setup, procs, "nginx-proxy", body, port, PROXY_CORE)
    return Target("nginx", "nginx proxy_pass (no auth)", port, PROXY_CORE, command)


def start_caddy(setup: Setup, procs: Processes) -> Target:
    """Caddy `reverse_proxy`, no auth, GOMAXPROCS=1, admin endpoint off."""
    binary = _binary("caddy")
    folder = private_dir(setup.workdir, "caddy")
    port = free_port()
    config = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "storage": {"module": "file_system", "root": str(folder / "data")},
        "apps": {"http": {"servers": {"bench": {
            "listen": [f"127.0.0.1:{port}"],
            "automatic_https": {"disable": True},
            "routes": [{"handle": [{
                "handler": "reverse_proxy",
                "upstreams": [{"dial": f"127.0.0.1:{setup.upstream_port}"}],
            }]}],
        }}}},
    }
    conf = folder / "caddy.json"
    conf.write_text(json.dumps(config, indent=2))
    command = pinned(PROXY_CORE, (binary, "run", "--config", str(conf)))
    env = {"GOMAXPROCS": "1", "HOME": str(folder), "XDG_DATA_HOME": str(folder / "xdg-data"),
           "XDG_CONFIG_HOME": str(folder / "xdg-config")}
    process = procs.start("caddy", command, env=env)
    wait_ready(process, f"http://127.0.0.1:{port}/", timeout=30)
    return Target("caddy", "Caddy 2 reverse_proxy (no auth)", port, PROXY_CORE,
                  ("GOMAXPROCS=1", *command))


def start_naive(setup: Setup, procs: Processes) -> Target:
    """The straightforward aiohttp + PyJWT proxy (bench/naive_proxy.py)."""
    port = free_port()
    command = pinned(PROXY_CORE, (sys.executable, "-m", "bench.naive_proxy", "--port", str(port),
                                  "--upstream", f"http://127.0.0.1:{setup.upstream_port}"))
    process = procs.start("naive", command, env={"BENCH_JWT_SECRET": setup.secret})
    wait_ready(process, f"http://127.0.0.1:{port}/", timeout=30)
    return Target("naive", "naive aiohttp + jwt.decode", port, PROXY_CORE, command, auth=True)


# -- tokens and sanity checks -------------------------------------------------------------


def login(target: Target, password: str) -> str:
    """A token from the gateway's own POST /user/login for the bench user."""
    body = json.dumps({"username": USER, "password": password}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{target.port}/user/login", data=body, method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        token: str = json.loads(answer.read())["token"]
    return token


def sign_like_gateway(secret: str, jti: str, *, age: float = 0.0) -> str:
    """A token with the gateway's claims (iss sub iat exp jti), signed with the secret.

    `age` seconds in the past: with `age > TTL + LEEWAY` the token has expired.
    """
    import jwt

    issued = round(time.time() - age, 6)
    claims = {"iss": ISSUER, "sub": USER, "iat": issued, "exp": issued + TTL, "jti": jti}
    return jwt.encode(claims, secret, algorithm="HS256")


def check(target: Target, token: str, secret: str) -> list[str]:
    """Problems found before measuring: a target that answers wrongly is not measured blind."""
    problems: list[str] = []
    bearer = {"Authorization": f"Bearer {token}"}
    status, _ = http_get(target.url, bearer)
    if status != 200:
        problems.append(f"GET / with the token: {status}, want 200")
    if target.auth:
        _, who = http_get(target.url + "whoami", {**bearer, "X-Auth-UserId": "mallory"})
        if who.strip() != USER:
            problems.append(f"upstream saw X-Auth-UserId {who.strip()!r}, want {USER!r}")
        status, _ = http_get(target.url)
        if status != 401:
            problems.append(f"GET / without a token: {status}, want 401")
        expired = sign_like_gateway(secret, random_jtis(1)[0], age=TTL + 3600)
        status, _ = http_get(target.url, {"Authorization": f"Bearer {expired}"})
        if status != 401:
            problems.append(f"GET / with an expired token: {status}, want 401")
    if target.revoked_jti is not None:
        status, _ = http_get(target.url, {
            "Authorization": f"Bearer {sign_like_gateway(secret, target.revoked_jti)}"})
        if status != 401:
            problems.append(f"GET / with a revoked jti: {status}, want 401")
    return problems


def describe(targets: Sequence[Target]) -> Iterator[str]:
    for target in targets:
        yield f"{target.name}: {' '.join(target.command)}"

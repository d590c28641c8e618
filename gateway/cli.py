"""gateway: an authenticating API gateway (see README.md). Logs go to stderr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway.config import Config, Secret, load_config
from gateway.errors import ConfigError
from gateway.observability import Metrics, configure_logging
from gateway.worker_metrics import WorkerMetrics, metrics_directory

log = logging.getLogger("gateway")
EXIT_CONFIG = 2
EXIT_STARTUP = 1
SUPERVISOR_PID_ENV = "GATEWAY_SUPERVISOR_PID"  # set by gateway.workers for its children
SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name, not a secret
DEFAULT_CONFIGS = (Path("config.yaml"), Path("config.example.yaml"))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "hash-password":
        return hash_password_command()
    config_path = _config_path(args.config)
    configure_logging("info")
    try:
        config = load_config(config_path)
        secret = resolve_secret(config, create=command == "serve")
        _check_keys(config, secret)
    except ConfigError as exc:
        print(f"{config_path}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "check-config":
        print(f"{config_path}: configuration OK")
        return 0
    configure_logging(config.log_level)
    workers = args.workers or config.listen.workers
    if workers > 1:
        from gateway.workers import is_port_free, run_workers
        if not is_port_free(config.listen.host, config.listen.port):
            log.error("startup_failed reason=cannot listen on %s:%s: address already in use",
                      config.listen.host, config.listen.port)
            return EXIT_STARTUP
        return run_workers(config_path, workers, config.data_dir)
    return serve(config, secret, reuse_port=args.reuse_port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
            ("serve", "run the gateway in the foreground; SIGTERM or Ctrl-C stops it after "
                      "the requests in flight are answered"),
            ("check-config", "validate the configuration, print every problem with its key "
                             "and exit (0 valid, 2 invalid)")):
        command = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("-c", "--config", type=Path, default=None,
                             help="YAML file (default: config.yaml, then config.example.yaml)")
        if name == "serve":
            command.add_argument("--workers", type=_positive_int, default=None,
                                 help="processes sharing the port (default: listen.workers)")
            command.add_argument("--reuse-port", action="store_true",
                                 help=argparse.SUPPRESS)  # set by the worker supervisor
    hashing = "print the argon2id hash of a password for users.inline or users.file"
    sub.add_parser("hash-password", help=hashing, description=(
        "Print the argon2id hash of a password for users.inline or users.file. On a terminal "
        "the password is asked twice (not echoed); otherwise it is read from stdin, one "
        "trailing newline removed: printf '%s' \"$PW\" | gateway hash-password"))
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def _config_path(given: Path | None) -> Path:
    if given is not None:
        return given
    return next((p for p in DEFAULT_CONFIGS if p.exists()), DEFAULT_CONFIGS[0])


def resolve_secret(config: Config, *, create: bool) -> Secret | None:
    """The configured HS* secret, else one kept in `data_dir` (made once, mode 0600)."""
    if config.tokens.secret is not None or not config.tokens.algorithm.startswith("HS"):
        return config.tokens.secret
    path = config.data_dir / SECRET_FILE
    if not path.exists():
        if not create:
            return Secret(secrets.token_urlsafe(48))  # check-config: serve would make one
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48) + "\n")
            logging.getLogger("gateway").warning(
                "signing_secret_generated path=%s (set tokens.secret to share one between "
                "hosts)", path)
        except FileExistsError:
            pass  # another worker made it first
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"tokens.secret: cannot read {path}: {exc.strerror}"]) from None
    if len(value.encode()) < 32:
        raise ConfigError([f"tokens.secret: {path} holds fewer than 32 bytes"])
    return Secret(value)


def _check_keys(config: Config, secret: Secret | None) -> None:
    from gateway.tokens import load_signing_keys
    from gateway.users import build_credentials

    load_signing_keys(config.tokens, secret)
    build_credentials(config.users)


def hash_password_command() -> int:
    """Print the argon2id hash of a password read from stdin (prompted on a tty)."""
    from gateway.users import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return EXIT_CONFIG
    else:
        try:
            password = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            print("error: the password is not UTF-8 text", file=sys.stderr)
            return EXIT_CONFIG
        # one trailing newline, LF or CRLF (what a terminal or a Windows file adds)
        password = password.removesuffix("\n").removesuffix("\r")
    if not password:
        print("error: empty password", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_password(password))
    return 0


def serve(config: Config, secret: Secret | None, *, reuse_port: bool = False) -> int:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and return 0."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            runner.run(_serve(config, secret, reuse_port))
        except StartupError as exc:
            log.error("startup_failed reason=%s", exc)
            return EXIT_STARTUP
    return 0


class StartupError(Exception):
    """The gateway could not start: a store that will not open, a port already taken."""


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


async def _serve(config: Config, secret: Secret | None, reuse_port: bool) -> None:
    from gateway.app import create_gateway
    from gateway.fastpath import build_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gateway = create_gateway(config, secret=secret)
    try:
        await gateway.start()
    except Exception as exc:  # whatever a store raises when it cannot open
        await gateway.close()
        raise StartupError(f"revocation store: {exc}") from exc
    server = build_server(gateway)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=30.0)
    await runner.setup()
    shared: WorkerMetrics | None = None
    try:
        site = web.TCPSite(runner, config.listen.host, config.listen.port,
                           reuse_port=reuse_port or None, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {config.listen.host}:{config.listen.port}: "
                               f"{exc.strerror}") from exc
        log.info("listening host=%s port=%s pid=%s store=%s", config.listen.host,
                 _bound_port(runner) or config.listen.port, os.getpid(),
                 config.revocation.store)
        shared = _share_metrics(config, gateway.services.metrics) if reuse_port else None
        background = [asyncio.create_task(_stop_when_orphaned(stop))] if reuse_port else []
        if shared is not None:
            background.append(asyncio.create_task(shared.publish_forever()))
        _tune_gc()
        await stop.wait()
        for task in background:
            task.cancel()
        log.info("shutting_down pid=%s", os.getpid())
    finally:
        await runner.cleanup()
        await gateway.close()
    if shared is not None:
        with contextlib.suppress(OSError):
            shared.publish()  # the requests answered while draining count too


def _share_metrics(config: Config, metrics: Metrics) -> WorkerMetrics | None:
    """A worker of `--workers` answers /metrics with every worker's counters."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor is None:
        return None
    return WorkerMetrics(metrics_directory(config.data_dir, int(supervisor)), metrics)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A supervised worker drains and exits once its supervisor is gone (even after a
    kill -9 of the supervisor), rather than serve on with stale configuration."""
    supervisor = int(os.environ.get(SUPERVISOR_PID_ENV, os.getppid()))
    while os.getppid() == supervisor:  # noqa: ASYNC110 - no event exists for a parent's death
        await asyncio.sleep(0.5)
    log.warning("supervisor_gone pid=%s; shutting down", os.getpid())
    stop.set()


def _bound_port(runner: web.BaseRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return None


def _tune_gc() -> None:
    """Start-up objects never die: freeze them out of the collector, collect less often
    (a gen-0 threshold of 100,000 measured ~4% more throughput than 10,000, same p99)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)

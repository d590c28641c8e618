"""`python -m bench` (`make bench`): the gateway beside HAProxy, nginx and Caddy, in one run.

Starts on 127.0.0.1 a fast upstream (nginx, else bench/upstream.py), the gateway (auth
required, 100,000 live revocations; also `--workers 2`, and 0 / 1,000,000 revocations at
c=50), and when installed HAProxy with `jwt_verify`, nginx `proxy_pass` and Caddy
`reverse_proxy`, plus the naive aiohttp + PyJWT proxy. Every proxy runs on core 0, wrk and
the upstream on core 1. wrk drives each configuration at 1, 10 and 50 connections,
round-robin over configurations, for several rounds; ratios are taken within a round.
0 and 1,000,000 revocations are compared in short alternating A/B runs of their own.

Writes bench/results/throughput.json, bench/results/throughput.png and (bench/micro.py)
bench/results/micro.json, prints a table and the goals of issue 4.

    python -m bench [--quick] [--rounds N] [--duration S] [--with-revocation]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from bench import proxies
from bench.proxies import LOAD_CORE, PROXY_CORE, Processes, Setup, Target, Unavailable

RESULTS = Path(__file__).resolve().parent / "results"
CONNECTIONS = (1, 10, 50)
MAIN_REVOCATIONS = 100_000
BIG_REVOCATIONS = 1_000_000
WARMUP_SECONDS = 1
PAUSE_SECONDS = 0.3
MICRO_TIMEOUT = 300
REVOCATION_TIMEOUT = 1800
# 0 vs 1,000,000 revocations: consecutive 5 s runs on this shared host differ by up to
# 15% whatever runs, so this pair is measured apart, in many short runs alternated
# A B, B A, A B, ... and compared pair by pair (median of the per-pair ratios).
AB_PAIR = ("gateway-0rev", "gateway-1m")
AB_ROUND_BASE = 100  # A/B runs are numbered 101, 102, ... apart from the main rounds
ORDER = ("direct", "gateway", "gateway-w2", "gateway-0rev", "gateway-1m", "haproxy-jwt",
         "nginx", "caddy", "naive")


# -- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One wrk run of one configuration at one connection count."""

    round: int
    config: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(RuntimeError):
    """wrk failed or printed something this parser does not understand."""


def parse_wrk(text: str) -> dict[str, float]:
    """req/s, p50/p99 (ms), requests, non-2xx and socket errors from wrk --latency output."""
    rps, requests = _RPS.search(text), _REQUESTS.search(text)
    percentiles = {p: float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(text)}
    if rps is None or requests is None or set(percentiles) != {"50", "99"}:
        raise WrkError(f"cannot parse wrk output:\n{text}")
    non_2xx = _NON_2XX.search(text)
    socket_errors = _SOCKET.search(text)
    return {
        "rps": float(rps.group(1)), "p50_ms": percentiles["50"], "p99_ms": percentiles["99"],
        "requests": int(requests.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
    }


def wrk_command(target: Target, token: str, connections: int, duration: float) -> list[str]:
    return ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s",
            "--latency", "--timeout", "2s", "-H", f"Authorization: Bearer {token}", target.url]


def run_bounded(command: Sequence[str], timeout: float, *, capture: bool = True) -> str:
    """Run a command in its own process group; kill the group if it outlives `timeout`.

    With `capture=False` its output goes straight to ours (progress shows as it comes).
    """
    popen = subprocess.Popen(list(command), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if capture else None,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = popen.communicate(timeout=timeout)
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    text = (out or b"").decode(errors="replace")
    if popen.returncode != 0:
        raise WrkError(f"{' '.join(command[:6])} exited with {popen.returncode}:\n{text}")
    return text


def run_wrk(target: Target, token: str, connections: int, duration: float,
            round_no: int) -> Run:
    text = run_bounded(wrk_command(target, token, connections, duration), duration + 20)
    return Run(round_no, target.name, connections, **parse_wrk(text))  # type: ignore[arg-type]


# -- summary ------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One configuration at one connection count, summarised over the rounds."""

    config: str
    label: str
    cores: str
    connections: int
    rounds: int
    rps: float
    p50_ms: float
    p99_ms: float
    vs_direct: float | None
    vs_haproxy: float | None
    added_p50_ms: float | None
    errors: int
    problems: list[str] = field(default_factory=list)


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _paired(runs: Sequence[Run], config: str, other: str, connections: int,
            combine: Callable[[Run, Run], float]) -> float | None:
    """Median over rounds of `combine(run, other's run of the same round)`."""
    mine = {r.round: r for r in runs if r.config == config and r.connections == connections}
    theirs = {r.round: r for r in runs if r.config == other and r.connections == connections}
    return _median(combine(mine[n], theirs[n]) for n in mine if n in theirs)


def _ratio(a: Run, b: Run) -> float:
    return a.rps / b.rps if b.rps else 0.0


def _added(a: Run, b: Run) -> float:
    return a.p50_ms - b.p50_ms


def summarise(runs: Sequence[Run], targets: Sequence[Target],
              problems: dict[str, list[str]]) -> list[Row]:
    rows = []
    for target in targets:
        for connections in sorted({r.connections for r in runs}):
            mine = [r for r in runs if r.config == target.name and r.connections == connections]
            if not mine:
                continue
            rows.append(Row(
                target.name, target.label, target.cores, connections, len(mine),
                statistics.median(r.rps for r in mine),
                statistics.median(r.p50_ms for r in mine),
                statistics.median(r.p99_ms for r in mine),
                _paired(runs, target.name, "direct", connections, _ratio),
                _paired(runs, target.name, "haproxy-jwt", connections, _ratio),
                (_paired(runs, target.name, "direct", connections, _added)
                 if connections == 1 else None),
                sum(r.errors for r in mine), list(problems.get(target.name, []))))
    return rows


# -- goals (issue 4, "Done when") ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    measured: float | None
    met: bool | None  # None: could not be measured here
    note: str = ""


def _errored(rows: Sequence[Row], *configs: str) -> list[str]:
    return sorted({r.config for r in rows if r.config in configs and (r.errors or r.problems)})


def _ratio_goal(runs: Sequence[Run], rows: Sequence[Row], text: str, other: str,
                threshold: float, config: str = "gateway") -> Goal:
    value = _paired(runs, config, other, 50, _ratio)
    if value is None:
        return Goal(text, None, None, f"{other} not measured")
    bad = _errored(rows, config, other)
    if bad:
        return Goal(text, value, False, f"errors in {', '.join(bad)}: not trusted")
    return Goal(text, value, value >= threshold)


def evaluate_goals(runs: Sequence[Run], rows: Sequence[Row]) -> list[Goal]:
    goals = [
        _ratio_goal(runs, rows, "gateway >= 0.4x HAProxy jwt_verify at c=50", "haproxy-jwt", 0.4),
        _ratio_goal(runs, rows, "gateway >= 1.0x Caddy reverse_proxy at c=50", "caddy", 1.0),
        _ratio_goal(runs, rows, "gateway >= 3.5x naive aiohttp+PyJWT at c=50", "naive", 3.5),
        _ratio_goal(runs, rows, "1M revocations within 5% of 0 at c=50 (ratio >= 0.95, A/B pairs)",
                    "gateway-0rev", 0.95, config="gateway-1m"),
    ]
    added = _paired(runs, "gateway", "direct", 1, _added)
    text = "gateway median added latency at c=1 < 0.3 ms"
    if added is None:
        goals.append(Goal(text, None, None, "not measured (c=1 not run)"))
    elif _errored(rows, "gateway", "direct"):
        goals.append(Goal(text, added, False, "errors: not trusted"))
    else:
        goals.append(Goal(text, added, added < 0.3))
    return goals


# -- output -------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: Sequence[Row]) -> None:
    header = (f"{'configuration':<44} {'cores':>5} {'c':>3} {'req/s':>9} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'x direct':>8} {'x haproxy':>9} {'+p50 ms':>8}  errors")
    print(header)
    print("-" * len(header))
    for row in rows:
        flag = f"{row.errors} ERRORS" if row.errors else "0"
        if row.problems:
            flag += " CHECK FAILED: " + "; ".join(row.problems)
        print(f"{row.label[:44]:<44} {row.cores:>5} {row.connections:>3} {row.rps:>9.0f} "
              f"{row.p50_ms:>7.3f} {row.p99_ms:>7.3f} {_fmt(row.vs_direct, '.3f'):>8} "
              f"{_fmt(row.vs_haproxy, '.3f'):>9} {_fmt(row.added_p50_ms, '.3f'):>8}  {flag}")


def print_goals(goals: Sequence[Goal]) -> None:
    print("\nGoals (issue 4):")
    for goal in goals:
        verdict = {True: "MET", False: "NOT MET", None: "UNKNOWN"}[goal.met]
        note = f"  ({goal.note})" if goal.note else ""
        print(f"  [{verdict:^7}] {goal.text}: measured {_fmt(goal.measured, '.3f')}{note}")


def draw_chart(rows: Sequence[Row], path: Path, title: str) -> None:
    """Ratio to direct at c=50 (top) and c=1 latency p50/p99 (bottom), one bar per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def by_c(connections: int) -> list[Row]:
        return [r for r in rows if r.connections == connections]

    # rows measured only in A/B pairs have no ratio to the direct upstream
    top = [r for r in by_c(50) if r.vs_direct is not None]
    bottom = by_c(1)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 9), constrained_layout=True)
    colours = ["tab:red" if r.errors or r.problems else
               "tab:blue" if r.config.startswith("gateway") else "tab:gray" for r in top]
    ratios = [r.vs_direct or 0.0 for r in top]
    ax1.barh([r.label for r in top], ratios, color=colours)
    for y, (row, value) in enumerate(zip(top, ratios, strict=True)):
        note = "  ERRORS" if row.errors or row.problems else ""
        ax1.text(value, y, f" {value:.3f} ({row.rps:,.0f}/s){note}", va="center", fontsize=8)
    haproxy = next((r for r in top if r.config == "haproxy-jwt"), None)
    if haproxy is not None and haproxy.vs_direct:
        ax1.axvline(0.4 * haproxy.vs_direct, color="tab:green", linestyle="--", linewidth=1,
                    label="goal: 0.4x HAProxy jwt_verify")
        ax1.legend(loc="lower right")
    ax1.invert_yaxis()
    ax1.set_xlabel("req/s as a fraction of the direct upstream (c=50, median of per-round ratios)")
    ax1.set_xlim(0, max([*ratios, 0.1]) * 1.35)
    ax1.set_title(title, fontsize=10)
    if not bottom:
        ax2.text(0.5, 0.5, "c=1 not measured (--quick)", ha="center", va="center",
                 transform=ax2.transAxes)
        ax2.set_axis_off()
    labels = [r.label for r in bottom]
    ys = range(len(bottom))
    ax2.barh([y - 0.2 for y in ys], [r.p50_ms for r in bottom], height=0.4, label="p50")
    ax2.barh([y + 0.2 for y in ys], [r.p99_ms for r in bottom], height=0.4, label="p99",
             color="tab:orange")
    for y, row in zip(ys, bottom, strict=True):
        added = "" if row.added_p50_ms is None else f" (+{row.added_p50_ms:.3f} vs direct)"
        ax2.text(row.p50_ms, y - 0.2, f" p50 {row.p50_ms:.3f} ms{added}", va="center",
                 fontsize=8)
    ax2.set_yticks(list(ys), labels)
    ax2.invert_yaxis()
    if bottom:
        ax2.set_xscale("log")
    ax2.set_xlabel("latency at c=1 (ms, log scale, median over rounds)")
    if bottom:
        ax2.legend(loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, meta: dict[str, object], runs: Sequence[Run], rows: Sequence[Row],
               goals: Sequence[Goal]) -> None:
    payload = {**meta, "runs": [asdict(r) for r in runs], "summary": [asdict(r) for r in rows],
               "goals": [asdict(g) for g in goals]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


# -- orchestration ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s, c=50 only")
    parser.add_argument("--ab-pairs", type=int, default=12,
                        help="A/B pairs of 0 vs 1M revocations at c=50 (default 12)")
    parser.add_argument("--ab-duration", type=float, default=2.0,
                        help="seconds per A/B run (default 2)")
    parser.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--gateway-log-level", default="info",
                        choices=("debug", "info", "warning", "error"),
                        help="the gateway's log_level (info: one access line per request)")
    parser.add_argument("--only", type=_names, default=None, metavar="NAME,...",
                        help=f"configurations to run (direct always runs): {', '.join(ORDER)}")
    parser.add_argument("--connections", type=_counts, default=None, metavar="C,...",
                        help="connection counts (default 1,10,50; --quick: 50)")
    parser.add_argument("--skip-micro", action="store_true", help="do not run bench/micro.py")
    parser.add_argument("--with-revocation", action="store_true",
                        help="also run `python -m bench.revocation` (long)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.ab_pairs = 1, 2.0, 2
    args.connections = args.connections or ((50,) if args.quick else CONNECTIONS)
    if args.rounds < 1 or args.duration <= 0 or args.ab_pairs < 1 or args.ab_duration <= 0:
        parser.error("--rounds, --duration, --ab-pairs and --ab-duration must be positive")
    return args


def _names(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = names - set(ORDER)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    return names | {"direct"}


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(c) for c in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("connection counts must be positive")
    return counts


class Clock:
    """Progress lines with the time since start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", flush=True)


def run_micro(args: argparse.Namespace, clock: Clock) -> None:
    clock.say("micro-benchmark of the auth path (bench/micro.py, core 0)")
    command = ["taskset", "-c", PROXY_CORE, sys.executable, "-m", "bench.micro",
               "--out", str(args.out / "micro.json"), *(["--quick"] if args.quick else [])]
    try:
        run_bounded(command, MICRO_TIMEOUT, capture=False)
    except (WrkError, subprocess.TimeoutExpired) as exc:
        clock.say(f"micro-benchmark FAILED: {exc}")


def make_setup(workdir: Path) -> Setup:
    from gateway.users import hash_password

    password = secrets.token_urlsafe(12)
    return Setup(workdir=workdir, secret=secrets.token_hex(32), password=password,
                 password_hash=hash_password(password),
                 revoked=proxies.random_jtis(MAIN_REVOCATIONS))


def start_all(setup: Setup, procs: Processes, args: argparse.Namespace,
              clock: Clock) -> tuple[list[Target], dict[str, str]]:
    """Every configuration that can run here, and why the others were skipped."""
    c50 = (50,)
    starters: list[tuple[str, Callable[[], Target]]] = [
        ("direct", lambda: proxies.start_upstream(setup, procs, args.upstream)),
        ("gateway", lambda: proxies.start_gateway(
            setup, procs, "gateway", revocations=setup.revoked,
            log_level=args.gateway_log_level)),
        ("gateway-w2", lambda: proxies.start_gateway(
            setup, procs, "gateway-w2", revocations=setup.revoked, workers=2,
            log_level=args.gateway_log_level)),
        ("gateway-0rev", lambda: proxies.start_gateway(
            setup, procs, "gateway-0rev", revocations=[], connections=c50,
            log_level=args.gateway_log_level)),
        ("gateway-1m", lambda: proxies.start_gateway(
            setup, procs, "gateway-1m", revocations=proxies.random_jtis(BIG_REVOCATIONS),
            connections=c50, log_level=args.gateway_log_level)),
        ("haproxy-jwt", lambda: proxies.start_haproxy(setup, procs)),
        ("nginx", lambda: proxies.start_nginx_proxy(setup, procs)),
        ("caddy", lambda: proxies.start_caddy(setup, procs)),
        ("naive", lambda: proxies.start_naive(setup, procs)),
    ]
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for name, start in starters:
        if args.only is not None and name not in args.only:
            continue
        clock.say(f"starting {name}")
        try:
            targets.append(start())
        except Unavailable as exc:
            skipped[name] = f"skipped: {exc}"
        except proxies.StartError as exc:
            if name == "direct":
                raise
            skipped[name] = f"FAILED to start: {exc}"
        if name in skipped:
            clock.say(f"{name}: {skipped[name]}")
    return targets, skipped


def obtain_token(setup: Setup, targets: Sequence[Target], clock: Clock) -> str:
    gateway = next((t for t in targets if t.name == "gateway"), None)
    if gateway is not None:
        try:
            token = proxies.login(gateway, setup.password)
        except (OSError, ValueError, KeyError) as exc:
            clock.say(f"LOGIN FAILED on the gateway ({exc!r}): signing the token instead")
        else:
            clock.say("token: POST /user/login of the bench user on the gateway")
            return token
    clock.say("token: signed with the secret and the gateway's claims")
    return proxies.sign_like_gateway(setup.secret, proxies.random_jtis(1)[0])


def check_all(targets: Sequence[Target], token: str, secret: str,
              clock: Clock) -> dict[str, list[str]]:
    problems = {}
    for target in targets:
        found = proxies.check(target, token, secret)
        if found:
            problems[target.name] = found
            clock.say(f"CHECK FAILED {target.name}: {'; '.join(found)}")
    clock.say(f"checked {len(targets)} configurations: {len(problems)} with problems")
    return problems


def schedule(targets: Sequence[Target], rounds: int,
             connections: Sequence[int]) -> list[tuple[int, int, Target]]:
    """Round-robin: in every round, each connection count, every configuration in turn.

    The order of configurations rotates from round to round so none is always first.
    """
    plan = []
    for round_no in range(1, rounds + 1):
        shift = (round_no - 1) % len(targets)
        order = [*targets[shift:], *targets[:shift]]
        for c in connections:
            plan += [(round_no, c, t) for t in order if t.connections is None or c in t.connections]
    return plan


def measure(plan: Sequence[tuple[int, int, Target]], token: str, duration: float,
            clock: Clock) -> list[Run]:
    runs = []
    for index, (round_no, connections, target) in enumerate(plan, 1):
        try:
            run = run_wrk(target, token, connections, duration, round_no)
        except (WrkError, subprocess.TimeoutExpired) as exc:
            clock.say(f"wrk FAILED on {target.name} c={connections}: {exc}")
            run = Run(round_no, target.name, connections, 0.0, 0.0, 0.0, 0, 0, 1)
        runs.append(run)
        flag = f"  {run.errors} ERRORS" if run.errors else ""
        clock.say(f"({index}/{len(plan)}) round {round_no} c={connections:<2} "
                  f"{target.name:<13} {run.rps:>9.0f} req/s  p50 {run.p50_ms:.3f} ms  "
                  f"p99 {run.p99_ms:.3f} ms{flag}")
        time.sleep(PAUSE_SECONDS)
    return runs


def split_ab(targets: Sequence[Target]) -> tuple[list[Target], list[Target]]:
    """(the main round-robin's targets, the A/B pair); the pair only when both run."""
    pair = [t for t in targets if t.name in AB_PAIR]
    if len(pair) != len(AB_PAIR):
        return list(targets), []
    return [t for t in targets if t.name not in AB_PAIR], pair


def measure_ab(pair: Sequence[Target], token: str, pairs: int, duration: float,
               clock: Clock) -> list[Run]:
    """0 vs 1,000,000 revocations at c=50: `pairs` pairs of short runs, the order
    alternating from pair to pair (A B, B A, ...) so that a drift favours neither."""
    if not pair:
        return []
    plan = []
    for number in range(1, pairs + 1):
        order = pair if number % 2 else pair[::-1]
        plan += [(AB_ROUND_BASE + number, 50, target) for target in order]
    clock.say(f"A/B: {len(plan)} runs of {duration:g}s, {' vs '.join(AB_PAIR)}")
    return measure(plan, token, duration, clock)


def warm_up(targets: Sequence[Target], token: str, clock: Clock) -> None:
    clock.say(f"warm-up: {WARMUP_SECONDS}s at c=10 on each configuration")
    for target in targets:
        try:
            run_wrk(target, token, 10, WARMUP_SECONDS, 0)
        except (WrkError, subprocess.TimeoutExpired) as exc:
            clock.say(f"warm-up FAILED on {target.name}: {exc}")


def run_revocation_bench(clock: Clock) -> None:
    clock.say("python -m bench.revocation (--with-revocation)")
    try:
        run_bounded([sys.executable, "-m", "bench.revocation"], REVOCATION_TIMEOUT,
                    capture=False)
    except (WrkError, subprocess.TimeoutExpired) as exc:
        clock.say(f"bench.revocation FAILED: {exc}")


def _meta(args: argparse.Namespace, targets: Sequence[Target], skipped: dict[str, str],
          token: str) -> dict[str, object]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "quick": args.quick,
        "rounds": args.rounds, "duration_s": args.duration,
        "ab_pairs": args.ab_pairs, "ab_duration_s": args.ab_duration,
        "connections": list(args.connections), "gateway_log_level": args.gateway_log_level,
        "cores": {"proxies": PROXY_CORE, "wrk_and_upstream": LOAD_CORE},
        "wrk": " ".join(wrk_command(targets[0], token[:12] + "...", 50, args.duration)),
        "configurations": {t.name: {"label": t.label, "cores": t.cores, "port": t.port,
                                    "command": " ".join(t.command)} for t in targets},
        "skipped": skipped,
    }


def benchmark(args: argparse.Namespace, workdir: Path, clock: Clock) -> int:
    setup = make_setup(workdir)
    with Processes(workdir) as procs:
        targets, skipped = start_all(setup, procs, args, clock)
        targets.sort(key=lambda t: ORDER.index(t.name))
        token = obtain_token(setup, targets, clock)
        problems = check_all(targets, token, setup.secret, clock)
        main, pair = split_ab(targets)
        plan = schedule(main, args.rounds, args.connections)
        minutes = (len(plan) * (args.duration + PAUSE_SECONDS + 0.2)
                   + len(pair) * args.ab_pairs * (args.ab_duration + PAUSE_SECONDS + 0.2)) / 60
        clock.say(f"{len(plan)} wrk runs of {args.duration:g}s and {len(pair) * args.ab_pairs} A/B "
                  f"runs of {args.ab_duration:g}s: about {minutes:.1f} min")
        warm_up(targets, token, clock)
        runs = measure(plan, token, args.duration, clock)
        runs += measure_ab(pair, token, args.ab_pairs, args.ab_duration, clock)
        exited = procs.exited()
        for name in exited:
            clock.say(f"WARNING: {name} exited during the benchmark")
    clock.say("all proxies stopped")
    rows = summarise(runs, targets, problems)
    goals = evaluate_goals(runs, rows)
    print()
    print_table(rows)
    print("cores: proxies on core 0, wrk and the upstream on core 1; gateway --workers 2 uses "
          "cores 0 and 1 and so shares core 1 with wrk and the upstream.")
    for name, reason in skipped.items():
        print(f"{name}: {reason}")
    print_goals(goals)
    print("\nCommands:")
    for line in proxies.describe(targets):
        print(f"  {line}")
    meta = {**_meta(args, targets, skipped, token), "exited_during_run": exited}
    write_json(args.out / "throughput.json", meta, runs, rows, goals)
    title = (f"gateway bench {meta['when']}: {args.rounds} round(s) x {args.duration:g}s\n"
             f"proxies on core 0 (gateway --workers 2: cores 0+1), wrk + upstream on core 1")
    draw_chart(rows, args.out / "throughput.png", title)
    clock.say(f"wrote {args.out / 'throughput.json'} and {args.out / 'throughput.png'}")
    return 0


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk` (make bench does it)",
              file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupt)
    args.out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        if not args.skip_micro:
            run_micro(args, clock)
        code = benchmark(args, workdir, clock)
        if args.with_revocation:
            run_revocation_bench(clock)
        return code
    except KeyboardInterrupt:
        clock.say("interrupted: every process stopped")
        return 130
    finally:
        if args.keep:
            clock.say(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        clock.say("done")


if __name__ == "__main__":
    raise SystemExit(main())

"""Load and validate the YAML configuration (DESIGN.md §3) into frozen pydantic models.

Only this module ever sees `"15m"` or `"10MiB"`: everything else reads seconds and bytes.
Every problem is collected before start-up refuses, each named by its key path.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.yamlfile import expand_env, load_yaml

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
               "GB": 1000**3, "GiB": 1024**3}
_HEADER_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
SUPPORTED_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA")
MIN_SECRET_BYTES = 32


class Secret:
    """A signing secret that never shows itself in a repr, a log line or an error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_duration(value: object) -> float:
    """`90s`, `15m`, `24h`, `7d`, `100ms` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 24h, 7d)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r} (must be finite and not negative)")
    return seconds


def parse_size(value: object) -> int:
    """`10MiB`, `16KiB`, `1MB` or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"not a size: {value!r} (use e.g. 16KiB, 10MiB)")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def _to_secret(value: object) -> Secret | None:
    if value is None or value == "":
        return None
    if isinstance(value, Secret):
        value = value.reveal()
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes (generate one with "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`)")
    return Secret(value)


def is_valid_username(name: str) -> bool:
    """Usernames become token subjects and then the identity header's value: printable,
    unpadded, bounded, and without `,` (a comma would read as a list of users)."""
    return (0 < len(name) <= 256 and name == name.strip() and name.isprintable()
            and "," not in name)


# Header names the gateway itself manages: none of them may be the identity header.
_RESERVED_HEADERS = frozenset({
    "host", "authorization", "cookie", "content-length", "transfer-encoding", "connection",
    "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization",
    "proxy-authenticate", "expect", "via", "forwarded", "x-forwarded-for",
    "x-forwarded-proto", "x-forwarded-host", "x-request-id", "content-type",
})


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
SecretValue = Annotated[Secret | None, BeforeValidator(_to_secret)]
def _to_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("not an IP network (expected e.g. 10.0.0.0/8)")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"not an IP network: {exc}") from None


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network,
                    PlainValidator(_to_network)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Listen(_Model):
    host: str = "0.0.0.0"  # noqa: S104 - a sidecar listens on the pod address by default
    port: int = Field(default=8081, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # a client connection without a complete request head for this long is closed
    keepalive_timeout: PositiveDuration = 75.0


class Tokens(_Model):
    issuer: str = Field(default="gateway", min_length=1)
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"] = "HS256"
    secret: SecretValue = None
    private_key_file: Path | None = None
    public_key_file: Path | None = None
    ttl: PositiveDuration = 24 * 3600.0
    leeway: Duration = 30.0

    @model_validator(mode="after")
    def _keys_match_algorithm(self) -> Tokens:
        if self.algorithm.startswith("HS"):
            if self.private_key_file or self.public_key_file:
                raise ValueError(f"{self.algorithm} uses `secret`, not key files")
        elif self.private_key_file is None:
            raise ValueError(f"{self.algorithm} needs `private_key_file` (PEM)")
        return self


class Users(_Model):
    inline: dict[str, str] = Field(default_factory=dict)
    file: Path | None = None

    @field_validator("inline")
    @classmethod
    def _hashes_are_known(cls, value: dict[str, str]) -> dict[str, str]:
        for name, hashed in value.items():
            if not is_valid_username(name):
                raise ValueError(f"user {name!r}: a username must be printable, without "
                                 "surrounding spaces or commas (it becomes a header value)")
            if not hashed.startswith(("$argon2id$", "$argon2i$", "$2b$", "$2a$", "$2y$")):
                raise ValueError(f"user {name!r}: not an argon2 or bcrypt hash "
                                 "(make one with `gateway hash-password`)")
        return value


class LoginLimit(_Model):
    max_failures: int = Field(default=10, ge=1)
    window: PositiveDuration = 300.0


class Revocation(_Model):
    store: Literal["memory", "sqlite", "redis"] = "sqlite"
    path: Path = Path("./data/revocations.db")
    url: str | None = None
    max_entries: int = Field(default=2_000_000, ge=1)
    max_staleness: PositiveDuration = 30.0
    sync_interval: PositiveDuration = 0.1

    @model_validator(mode="after")
    def _redis_needs_url(self) -> Revocation:
        if self.store == "redis":
            if not self.url:
                raise ValueError("store `redis` needs `url` (e.g. redis://127.0.0.1:6379/0)")
            if not self.url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("url: not a redis://, rediss:// or unix:// URL")
        return self


class UpstreamTimeouts(_Model):
    connect: PositiveDuration = 5.0
    read: PositiveDuration = 60.0


class Limits(_Model):
    max_body: ByteSize = 10 * 1024 * 1024
    client_timeout: PositiveDuration = 60.0  # longest wait for the next byte of a body


class Route(_Model):
    prefix: str
    upstream: str
    auth: Literal["required", "optional", "none"] = "required"
    forward_authorization: bool = False
    strip_prefix: bool = False

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?#%\\") or not value.isprintable():
            raise ValueError("must be a plain path starting with `/`")
        if any(seg in (".", "..") for seg in value.split("/")):
            raise ValueError("must not contain `.` or `..` segments")
        return value

    @field_validator("upstream")
    @classmethod
    def _upstream_is_a_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("not a URL: it contains spaces or control characters")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not a URL (expected http://host[:port][/path])")
        if parts.netloc.endswith(":"):
            raise ValueError("not a URL: the port is empty")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        del port
        return value.rstrip("/")


class Config(_Model):
    listen: Listen = Field(default_factory=Listen)
    trusted_networks: tuple[Network, ...] = ()
    tokens: Tokens = Field(default_factory=Tokens)
    users: Users = Field(default_factory=Users)
    login_limit: LoginLimit = Field(default_factory=LoginLimit)
    revocation: Revocation = Field(default_factory=Revocation)
    identity_header: str = "X-Auth-UserId"
    upstream_timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    upstream_client: Literal["fast", "aiohttp"] = "fast"
    limits: Limits = Field(default_factory=Limits)
    routes: tuple[Route, ...] = ()
    data_dir: Path = Path("./data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: Literal["all", "errors", "off"] = "errors"

    @field_validator("identity_header")
    @classmethod
    def _is_header_name(cls, value: str) -> str:
        if not _HEADER_TOKEN.match(value):
            raise ValueError("not a valid HTTP header name")
        if value.lower().replace("_", "-") in _RESERVED_HEADERS:
            raise ValueError(f"{value} is a header the gateway manages itself")
        return value

    @field_validator("routes")
    @classmethod
    def _prefixes_unique(cls, value: tuple[Route, ...]) -> tuple[Route, ...]:
        seen: set[str] = set()
        for route in value:
            key = route.prefix.rstrip("/") or "/"
            if key in seen:
                raise ValueError(f"prefix {route.prefix!r} appears twice")
            seen.add(key)
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "literal[", "union[")) or part in ("json-or-python",):
            continue
        else:
            out = _join(out, part)
    return out or "<root>"


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{_key_path(tuple(error['loc']))}: {message}")
    return problems


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _check_paths(data: dict[str, Any]) -> list[str]:
    """Files the gateway will read must exist; folders it will write must be creatable.

    Runs on the raw (expanded, absolutised) data so that these problems are listed
    together with schema problems, not only after the schema passed.
    """
    problems = []
    users, tokens = _section(data, "users"), _section(data, "tokens")
    for key, value in (("users.file", users.get("file")),
                       ("tokens.private_key_file", tokens.get("private_key_file")),
                       ("tokens.public_key_file", tokens.get("public_key_file"))):
        if isinstance(value, str) and value and not Path(value).is_file():
            problems.append(f"{key}: file not found: {value}")
    writable = [("data_dir", data.get("data_dir"))]
    revocation = _section(data, "revocation")
    if revocation.get("store", "sqlite") == "sqlite" and isinstance(revocation.get("path"), str):
        writable.append(("revocation.path", str(Path(revocation["path"]).parent)))
    for key, folder in writable:
        if isinstance(folder, str) and not _is_creatable(Path(folder)):
            problems.append(f"{key}: cannot create or write {folder}")
    if not users.get("inline") and not users.get("file"):
        problems.append("users: no users configured (add `inline` or `file`)")
    if not data.get("routes"):
        problems.append("routes: at least one route is required")
    return problems


def _is_creatable(folder: Path) -> bool:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _absolutise(data: dict[str, Any], base: Path) -> None:
    """Make relative file paths relative to the config file's folder, not the cwd."""
    for section, key in (("users", "file"), ("tokens", "private_key_file"),
                         ("tokens", "public_key_file"), ("revocation", "path")):
        sub = data.get(section)
        if isinstance(sub, dict) and isinstance(sub.get(key), str) and sub[key]:
            sub[key] = str(_resolve(base, Path(sub[key])))
    if isinstance(data.get("data_dir"), str):
        data["data_dir"] = str(_resolve(base, Path(data["data_dir"])))
    else:
        data.setdefault("data_dir", str(_resolve(base, Path("./data"))))
    revocation = data.setdefault("revocation", {})
    if isinstance(revocation, dict) and "path" not in revocation:
        revocation["path"] = str(Path(data["data_dir"]) / "revocations.db")


def parse_config(data: object, environ: Mapping[str, str], base: Path) -> Config:
    """Validate already-parsed YAML data; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["<root>: the configuration must be a mapping of keys"])
    problems: list[str] = []
    expanded = expand_env(data, environ, "", problems)
    _absolutise(expanded, base)
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(problems + _format_errors(exc) + _check_paths(expanded)) from None
    problems += _check_paths(expanded)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML file at `path`; file-level problems name it."""
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read it: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        data = load_yaml(text)
        return parse_config(data, environ, path.resolve().parent)
    except yaml.YAMLError as exc:
        where = str(exc).replace('in "<unicode string>", ', "at ")
        raise ConfigError([f"{path}: not valid YAML: {where}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: the YAML refers to itself (a recursive alias)"]) from None

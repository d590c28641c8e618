"""Configuration loading and validation (DESIGN.md §3): every problem named by its key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, Secret, load_config, parse_config, parse_duration, parse_size
from gateway.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "config-test-secret-0123456789-abcdefghijklmnop"
# The config only checks that a hash names a known scheme; no hashing is needed here.
HASH = "$argon2id$v=19$m=65536,t=3,p=4$" + "A" * 22 + "$" + "B" * 43
UPSTREAM = "http://127.0.0.1:8080"


def valid_data(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A minimal valid configuration as YAML-shaped data; keyword arguments replace sections."""
    data: dict[str, Any] = {
        "tokens": {"secret": SECRET, "ttl": "1h", "leeway": "30s"},
        "users": {"inline": {"marco": HASH}},
        "revocation": {"store": "memory"},
        "data_dir": str(tmp_path / "data"),
        "routes": [
            {"prefix": "/public", "upstream": UPSTREAM, "auth": "none"},
            {"prefix": "/", "upstream": UPSTREAM},
        ],
    }
    data.update(sections)
    return data


def parse(data: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None) -> Config:
    return parse_config(data, environ or {}, tmp_path)


def problems_of(data: object, tmp_path: Path, environ: dict[str, str] | None = None) -> list[str]:
    """The problems parse_config refuses `data` with (fails the test if it accepts it)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ or {}, tmp_path)
    assert info.value.problems, "a ConfigError must list at least one problem"
    return info.value.problems


def has_problem(problems: list[str], prefix: str) -> bool:
    return any(problem.startswith(prefix) for problem in problems)


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- ${VAR} expansion -------------------------------------------------------------------

EXPANSIONS = [
    ("${ISSUER}", {"ISSUER": "from-env"}, "from-env", "set"),
    ("${ISSUER:-fallback}", {"ISSUER": "from-env"}, "from-env", "set-beats-default"),
    ("${ISSUER:-fallback}", {}, "fallback", "unset-uses-default"),
    ("pre-${ISSUER:-mid}-post", {}, "pre-mid-post", "default-inside-text"),
    ("${A}-${B:-b}", {"A": "a"}, "a-b", "two-references"),
    ("${ISSUER:-fallback}", {"ISSUER": ""}, "fallback", "set-but-empty-uses-default-like-sh"),
    ("${ISSUER}", {"ISSUER": "${OTHER}"}, "${OTHER}", "values-are-not-re-expanded"),
]


@pytest.mark.parametrize(("raw", "environ", "expected"), [e[:3] for e in EXPANSIONS],
                         ids=[e[3] for e in EXPANSIONS])
def test_env_references_are_replaced_from_the_environment(
    tmp_path: Path, raw: str, environ: dict[str, str], expected: str
) -> None:
    """`${NAME}` takes the variable; `${NAME:-default}` the default when unset or empty (sh)."""
    data = valid_data(tmp_path, tokens={"secret": SECRET, "issuer": raw})
    assert parse(data, tmp_path, environ).tokens.issuer == expected


UNSET_REFERENCES = [
    (lambda d: d["tokens"].update(issuer="${GW_ISSUER}"), "tokens.issuer", "GW_ISSUER",
     "nested-key"),
    (lambda d: d["routes"][1].update(upstream="${GW_UPSTREAM}"), "routes[1].upstream",
     "GW_UPSTREAM", "inside-a-list"),
    (lambda d: d.update(identity_header="X-${GW_HEADER}"), "identity_header", "GW_HEADER",
     "top-level-inside-text"),
]


@pytest.mark.parametrize(("edit", "path", "variable"), [u[:3] for u in UNSET_REFERENCES],
                         ids=[u[3] for u in UNSET_REFERENCES])
def test_unset_variable_without_default_is_a_problem_naming_key_path_and_variable(
    tmp_path: Path, edit: Any, path: str, variable: str
) -> None:
    """An unset `${NAME}` without default is refused: the problem names the key and NAME."""
    data = valid_data(tmp_path)
    edit(data)
    problems = problems_of(data, tmp_path)
    assert any(p.startswith(f"{path}: ") and variable in p for p in problems), problems


# --- durations and sizes ----------------------------------------------------------------

DURATIONS = [
    ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("7d", 604800.0), ("100ms", 0.1),
    ("1.5h", 5400.0), ("30", 30.0), (45, 45.0), (2.5, 2.5), (0, 0.0),
]


@pytest.mark.parametrize(("raw", "seconds"), DURATIONS, ids=[str(r) for r, _ in DURATIONS])
def test_durations_parse_to_seconds(raw: object, seconds: float) -> None:
    """Durations accept ms/s/m/h/d suffixes or a plain number of seconds."""
    assert parse_duration(raw) == pytest.approx(seconds)


BAD_DURATIONS = [
    ("10x", "unknown-unit"), ("-5s", "negative-string"), (-1, "negative-number"),
    ("", "empty"), ("s", "unit-only"), ("5 minutes", "words"), ("1h30m", "compound"),
    (True, "boolean"), (None, "null"), ([5], "list"),
    (float("nan"), "nan"), (float("inf"), "infinity"),
]


@pytest.mark.parametrize("raw", [r for r, _ in BAD_DURATIONS],
                         ids=[i for _, i in BAD_DURATIONS])
def test_bad_durations_are_refused(raw: object) -> None:
    """Anything but a finite, non-negative number or `<number><unit>` is not a duration."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


@pytest.mark.parametrize(
    ("key", "raw"),
    [("ttl", "soon"), ("ttl", "0s"), ("leeway", "-1s"), ("ttl", ".inf"), ("leeway", ".nan")],
    ids=["ttl-word", "ttl-zero", "leeway-negative", "ttl-yaml-infinity", "leeway-yaml-nan"],
)
def test_bad_duration_in_config_is_a_problem_at_its_key(
    tmp_path: Path, key: str, raw: str
) -> None:
    """A bad duration in the file is a problem named `tokens.<key>`, never a silent value."""
    path = write(tmp_path, f"tokens: {{secret: {SECRET}, {key}: {raw}}}\n"
                           f"users: {{inline: {{marco: '{HASH}'}}}}\n"
                           f"routes: [{{prefix: /, upstream: '{UPSTREAM}'}}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert has_problem(info.value.problems, f"tokens.{key}: "), info.value.problems


SIZES = [("10MiB", 10 * 1024 * 1024), ("16KiB", 16 * 1024), ("1MB", 1_000_000),
         ("2GiB", 2 * 1024**3), ("512", 512), (512, 512), ("7B", 7)]


@pytest.mark.parametrize(("raw", "size"), SIZES, ids=[str(r) for r, _ in SIZES])
def test_sizes_parse_to_bytes(raw: object, size: int) -> None:
    """Sizes accept B/KB/KiB/MB/MiB/GB/GiB suffixes or a plain number of bytes."""
    assert parse_size(raw) == size


BAD_SIZES = [("10 MiBs", "bad-unit"), ("1.5MiB", "fraction"), ("-1", "negative-string"),
             (-1, "negative-number"), (1.5, "float"), (True, "boolean"), ("ten", "word")]


@pytest.mark.parametrize("raw", [r for r, _ in BAD_SIZES], ids=[i for _, i in BAD_SIZES])
def test_bad_sizes_are_refused(raw: object) -> None:
    """Anything but a non-negative whole number of bytes or `<int><unit>` is not a size."""
    with pytest.raises(ValueError, match="size"):
        parse_size(raw)


def test_config_sizes_and_durations_reach_the_model_as_numbers(tmp_path: Path) -> None:
    """Only config.py sees `16KiB` or `15m`: the model holds bytes and seconds."""
    config = parse(valid_data(tmp_path, limits={"max_body": "16KiB"},
                              login_limit={"max_failures": 3, "window": "15m"},
                              upstream_timeouts={"connect": "100ms", "read": "90s"}), tmp_path)
    assert config.limits.max_body == 16384
    assert config.login_limit.window == 900.0
    assert config.upstream_timeouts.connect == pytest.approx(0.1)
    assert config.upstream_timeouts.read == 90.0
    assert config.tokens.ttl == 3600.0


# --- unknown keys -----------------------------------------------------------------------

UNKNOWN_KEY_PLACES: list[tuple[tuple[str | int, ...], str]] = [
    ((), "colour"), (("listen",), "listen.colour"), (("tokens",), "tokens.colour"),
    (("users",), "users.colour"), (("login_limit",), "login_limit.colour"),
    (("revocation",), "revocation.colour"), (("upstream_timeouts",), "upstream_timeouts.colour"),
    (("limits",), "limits.colour"), (("routes", 1), "routes[1].colour"),
]


@pytest.mark.parametrize(("where", "path"), UNKNOWN_KEY_PLACES,
                         ids=[p for _, p in UNKNOWN_KEY_PLACES])
def test_unknown_key_at_any_level_is_named_by_its_path(
    tmp_path: Path, where: tuple[str | int, ...], path: str
) -> None:
    """A key the schema does not know is refused as `<path>: unknown key` (typos surface)."""
    data = valid_data(tmp_path)
    node: Any = data
    for part in where:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node["colour"] = "blue"
    assert f"{path}: unknown key" in problems_of(data, tmp_path)


# --- duplicate YAML keys ----------------------------------------------------------------

DUPLICATES = [
    ("listen: {port: 1}\nlisten: {port: 2}\n", "listen", "top-level"),
    ("tokens:\n  ttl: 1h\n  ttl: 2h\n", "ttl", "nested-block"),
    ("limits: {max_body: 1KiB, max_body: 2KiB}\n", "max_body", "nested-flow"),
    ("routes:\n  - prefix: /a\n    prefix: /b\n    upstream: http://x\n", "prefix", "in-a-list"),
    ("users:\n  inline:\n    marco: x\n    marco: y\n", "marco", "username"),
]


@pytest.mark.parametrize(("text", "key"), [d[:2] for d in DUPLICATES],
                         ids=[d[2] for d in DUPLICATES])
def test_duplicate_yaml_keys_are_refused_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    """Duplicate keys are an error, not "last one wins" as with yaml.safe_load."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    message = "\n".join(info.value.problems)
    assert "duplicate key" in message
    assert repr(key) in message


# --- the signing secret -----------------------------------------------------------------

SECRET_LENGTHS = [
    ("x" * 31, False, "31-ascii-bytes"), ("x" * 32, True, "32-ascii-bytes"),
    ("\u00e9" * 16, True, "16-chars-32-utf8-bytes"), ("\u00e9" * 15 + "x", False,
                                                       "16-chars-31-utf8-bytes"),
]


@pytest.mark.parametrize(("secret", "accepted"), [s[:2] for s in SECRET_LENGTHS],
                         ids=[s[2] for s in SECRET_LENGTHS])
def test_secret_needs_32_utf8_bytes(tmp_path: Path, secret: str, accepted: bool) -> None:
    """tokens.secret shorter than 32 bytes (UTF-8) is refused at start-up."""
    data = valid_data(tmp_path, tokens={"secret": secret})
    if accepted:
        assert parse(data, tmp_path).tokens.secret == Secret(secret)
    else:
        assert has_problem(problems_of(data, tmp_path), "tokens.secret: ")


def test_short_secret_problem_never_shows_the_secret(tmp_path: Path) -> None:
    """A refused secret is named by key path only; its value is in no problem or message."""
    short = "hunter2-short-secret"
    data = valid_data(tmp_path, tokens={"secret": short, "ttl": "never"}, colour=1)
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path)
    assert has_problem(info.value.problems, "tokens.secret: ")
    for text in [*info.value.problems, str(info.value), repr(info.value)]:
        assert short not in text


def test_secret_repr_hides_the_value(tmp_path: Path) -> None:
    """Secret, and any config holding one, shows `Secret('***')` in repr and str."""
    config = parse(valid_data(tmp_path), tmp_path)
    assert config.tokens.secret is not None
    assert config.tokens.secret.reveal() == SECRET
    assert repr(config.tokens.secret) == "Secret('***')"
    assert str(config.tokens.secret) == "Secret('***')"
    for text in (repr(config), str(config), repr(config.tokens), f"{config.tokens}"):
        assert SECRET not in text
        assert "Secret('***')" in text


def test_empty_secret_means_none_configured(tmp_path: Path) -> None:
    """`secret: ${VAR:-}` with VAR unset leaves no secret (the CLI then generates one)."""
    data = valid_data(tmp_path, tokens={"secret": "${GW_SECRET:-}"})
    assert parse(data, tmp_path).tokens.secret is None


# --- files, routes, stores --------------------------------------------------------------

def test_missing_users_file_is_a_problem(tmp_path: Path) -> None:
    """`users.file` naming no file is refused as `users.file: file not found`."""
    data = valid_data(tmp_path, users={"file": "absent-users.yaml"})
    assert has_problem(problems_of(data, tmp_path), "users.file: file not found")


BAD_UPSTREAMS = [
    ("ftp://127.0.0.1/", "ftp-scheme"), ("127.0.0.1:8080", "no-scheme"),
    ("http://", "no-host"), ("localhost", "bare-host"), ("http://h:99999", "port-out-of-range"),
    ("http://user:pw@h", "credentials"), ("http://h/?q=1", "query"), ("", "empty"),
]


@pytest.mark.parametrize("upstream", [u for u, _ in BAD_UPSTREAMS],
                         ids=[i for _, i in BAD_UPSTREAMS])
def test_route_upstream_must_be_an_http_url(tmp_path: Path, upstream: str) -> None:
    """A route upstream that is not a plain http(s) URL is `routes[N].upstream: ...`."""
    data = valid_data(tmp_path)
    data["routes"][1]["upstream"] = upstream
    problems = problems_of(data, tmp_path)
    assert has_problem(problems, "routes[1].upstream: "), problems
    assert not has_problem(problems, "routes[0]")


@pytest.mark.parametrize("upstream", ["http://10.0.0.1:8080", "https://api.example/base/"],
                         ids=["http-with-port", "https-with-path"])
def test_route_upstream_http_urls_are_accepted(tmp_path: Path, upstream: str) -> None:
    """http and https URLs with host, port and path are valid upstreams (trailing / dropped)."""
    data = valid_data(tmp_path)
    data["routes"][1]["upstream"] = upstream
    assert parse(data, tmp_path).routes[1].upstream == upstream.rstrip("/")


BAD_PREFIXES = [("api", "no-leading-slash"), ("/a/../b", "dotdot-inside"), ("/..", "dotdot"),
                ("/a/./b", "dot-segment"), ("/a?x", "query-char"), ("/a%2e", "escape")]


@pytest.mark.parametrize("prefix", [p for p, _ in BAD_PREFIXES],
                         ids=[i for _, i in BAD_PREFIXES])
def test_route_prefix_must_be_a_plain_absolute_path(tmp_path: Path, prefix: str) -> None:
    """A prefix without a leading `/`, or with `.`/`..` segments, is `routes[N].prefix: ...`."""
    data = valid_data(tmp_path)
    data["routes"][0]["prefix"] = prefix
    assert has_problem(problems_of(data, tmp_path), "routes[0].prefix: ")


@pytest.mark.parametrize(("first", "second"), [("/a", "/a/"), ("/a/", "/a"), ("/a", "/a")],
                         ids=["bare-then-slash", "slash-then-bare", "identical"])
def test_duplicate_route_prefixes_are_refused(tmp_path: Path, first: str, second: str) -> None:
    """Prefixes equal up to a trailing slash collide (they match the same paths)."""
    data = valid_data(tmp_path, routes=[{"prefix": first, "upstream": UPSTREAM},
                                        {"prefix": second, "upstream": UPSTREAM}])
    problems = problems_of(data, tmp_path)
    assert any(p.startswith("routes") and repr(second) in p for p in problems), problems


def test_redis_store_needs_a_url(tmp_path: Path) -> None:
    """`revocation.store: redis` without `url` is refused at the revocation key."""
    problems = problems_of(valid_data(tmp_path, revocation={"store": "redis"}), tmp_path)
    assert any(p.startswith("revocation") and "url" in p for p in problems), problems
    with_url = valid_data(tmp_path, revocation={"store": "redis",
                                                "url": "redis://127.0.0.1:6379/0"})
    assert parse(with_url, tmp_path).revocation.url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("entry", ["not-a-network", "10.0.0.300/8", "::1/129"],
                         ids=["word", "bad-octet", "bad-v6-prefix"])
def test_bad_trusted_network_is_named_by_its_index(tmp_path: Path, entry: str) -> None:
    """Each problem for a bad trusted network reads `trusted_networks[N]: ...`, no internals."""
    data = valid_data(tmp_path, trusted_networks=["127.0.0.1/32", entry])
    problems = problems_of(data, tmp_path)
    assert problems
    assert all(p.startswith("trusted_networks[1]: ") for p in problems), problems


def test_algorithm_and_key_material_must_agree(tmp_path: Path) -> None:
    """RS256 without a private key file, or HS256 with one, is a `tokens` problem."""
    rs = problems_of(valid_data(tmp_path, tokens={"algorithm": "RS256"}), tmp_path)
    assert any(p.startswith("tokens") and "private_key_file" in p for p in rs), rs
    key = tmp_path / "key.pem"
    key.write_text("not used")
    hs = problems_of(valid_data(tmp_path, tokens={"secret": SECRET,
                                                  "private_key_file": str(key)}), tmp_path)
    assert has_problem(hs, "tokens: "), hs


# --- all problems at once ---------------------------------------------------------------

def test_several_schema_problems_are_all_listed(tmp_path: Path) -> None:
    """Validation collects every problem before refusing, each with its key path."""
    data = valid_data(
        tmp_path,
        colour="blue",
        listen={"port": 70000},
        tokens={"secret": "short", "ttl": "soon"},
        routes=[{"prefix": "api", "upstream": UPSTREAM}, {"prefix": "/", "upstream": "ftp://x"}],
        identity_header="${GW_UNSET_HEADER}",
    )
    problems = problems_of(data, tmp_path)
    for path in ("colour: unknown key", "listen.port: ", "tokens.secret: ", "tokens.ttl: ",
                 "routes[0].prefix: ", "routes[1].upstream: ", "identity_header: "):
        assert has_problem(problems, path), (path, problems)


def test_file_problems_are_listed_together_with_schema_problems(tmp_path: Path) -> None:
    """A missing users file is reported in the same run as a schema problem, not after it."""
    data = valid_data(tmp_path, users={"file": "absent-users.yaml"}, colour="blue")
    problems = problems_of(data, tmp_path)
    assert "colour: unknown key" in problems
    assert has_problem(problems, "users.file: file not found"), problems


# --- loading files ----------------------------------------------------------------------

def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """users.file, revocation.path and data_dir are relative to the config file, not the cwd."""
    folder = tmp_path / "conf"
    (folder / "keys").mkdir(parents=True)
    (folder / "users.yaml").write_text(f"alice: '{HASH}'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(folder, "tokens: {secret: " + SECRET + "}\n"
                         "users: {file: users.yaml}\n"
                         "revocation: {store: sqlite, path: db/revocations.db}\n"
                         "data_dir: state\n"
                         f"routes: [{{prefix: /, upstream: '{UPSTREAM}'}}]\n")
    config = load_config(path, {})
    base = folder.resolve()
    assert config.users.file == base / "users.yaml"
    assert config.revocation.path == base / "db" / "revocations.db"
    assert config.data_dir == base / "state"


def test_default_revocation_path_lives_in_data_dir(tmp_path: Path) -> None:
    """Without `revocation.path`, the sqlite store lives at `<data_dir>/revocations.db`."""
    path = write(tmp_path, "tokens: {secret: " + SECRET + "}\n"
                           f"users: {{inline: {{marco: '{HASH}'}}}}\n"
                           "data_dir: var\n"
                           f"routes: [{{prefix: /, upstream: '{UPSTREAM}'}}]\n")
    config = load_config(path, {})
    assert config.revocation.store == "sqlite"
    assert config.revocation.path == tmp_path.resolve() / "var" / "revocations.db"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that cannot be read is a ConfigError naming the path, not an OSError."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, {})
    assert any(str(missing) in p for p in info.value.problems), info.value.problems


INVALID_YAML = [
    ("listen: [1, 2\n", "unclosed-flow"),
    ("a: b: c\n", "mapping-in-plain-scalar"),
    ("tokens:\n\tttl: 1h\n", "tab-indent"),
    ("? [a, b]\n: 1\n", "unhashable-list-key"),
    ("{[a]: 1}\n", "unhashable-flow-key"),
    ("a: !!python/object:os.system x\n", "python-tag"),
]


@pytest.mark.parametrize("text", [t for t, _ in INVALID_YAML], ids=[i for _, i in INVALID_YAML])
def test_invalid_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    """Any YAML the safe loader cannot build is a ConfigError naming the file, never a crash."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert has_problem(info.value.problems, f"{path}: "), info.value.problems


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"],
                         ids=["list", "string", "number"])
def test_non_mapping_document_is_refused_at_root(tmp_path: Path, text: str) -> None:
    """The document must be a mapping of keys; anything else is a `<root>` problem."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    assert has_problem(info.value.problems, "<root>: "), info.value.problems


def test_shipped_example_config_validates() -> None:
    """config.example.yaml at the repository root is a valid configuration as shipped."""
    config = load_config(REPO_ROOT / "config.example.yaml", {})
    assert config.tokens.algorithm == "HS256"
    assert config.tokens.secret is None  # generated into data_dir at first `serve`
    assert [r.upstream for r in config.routes] == ["http://127.0.0.1:8080"] * 2
    assert config.users.inline


def test_shipped_example_config_takes_its_variables(tmp_path: Path) -> None:
    """The example's `${GATEWAY_JWT_SECRET:-}` and `${DEMO_UPSTREAM_PORT:-8080}` are honoured."""
    environ = {"GATEWAY_JWT_SECRET": SECRET, "DEMO_UPSTREAM_PORT": "9001"}
    config = load_config(REPO_ROOT / "config.example.yaml", environ)
    assert config.tokens.secret == Secret(SECRET)
    assert {r.upstream for r in config.routes} == {"http://127.0.0.1:9001"}


def test_parse_config_does_not_mutate_its_input(tmp_path: Path) -> None:
    """Validation works on a copy: the caller's data (e.g. a test's base dict) is unchanged."""
    data = valid_data(tmp_path, tokens={"secret": "${GW_S:-" + SECRET + "}"})
    before = copy.deepcopy(data)
    parse(data, tmp_path)
    assert data == before


@pytest.mark.parametrize("name", ["", " bob", "bob ", "a\tb", "marco, admin", "x" * 257],
                         ids=["empty", "leading-space", "trailing-space", "tab", "comma",
                              "too-long"])
def test_usernames_that_cannot_be_a_header_value_are_refused(tmp_path: Path,
                                                            name: str) -> None:
    """A username becomes the identity header's value: printable, unpadded, no comma."""
    problems = problems_of(valid_data(tmp_path, users={"inline": {name: HASH}}), tmp_path)
    assert has_problem(problems, "users.inline: ")


@pytest.mark.parametrize("header", ["Host", "authorization", "X-Forwarded-For", "Via",
                                    "X_Forwarded_Proto", "Cookie"])
def test_identity_header_cannot_be_a_header_the_gateway_manages(tmp_path: Path,
                                                                header: str) -> None:
    """The identity header must not collide with a header the gateway sets or strips."""
    problems = problems_of(valid_data(tmp_path, identity_header=header), tmp_path)
    assert has_problem(problems, "identity_header: ")


def test_upstream_with_a_space_is_refused(tmp_path: Path) -> None:
    """`http://127.0.0.1 :8080` is not a URL (it would pass and then fail every request)."""
    routes = [{"prefix": "/", "upstream": "http://127.0.0.1 :8080"}]
    assert has_problem(problems_of(valid_data(tmp_path, routes=routes), tmp_path),
                       "routes[0].upstream: ")


@pytest.mark.parametrize("raw", [b"\xff\xfe garbage: 1\n", b"a: &a [*a]\n"],
                         ids=["not-utf8", "recursive-alias"])
def test_unreadable_config_is_a_config_error(tmp_path: Path, raw: bytes) -> None:
    """A config that is not UTF-8 or refers to itself is a ConfigError, not a traceback."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems[0].startswith(f"{path}: ")

"""HAPROXY_* environment -> Settings: defaults of the contract, overrides, invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest
from consul_lb.env_values import is_dns_name
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.process import make
from consul_lb.settings import (
    COMMON_VARIABLES,
    RELOAD_STRATEGIES,
    VARIABLES,
    Settings,
    SettingsError,
    common_from_env,
    from_env,
)

DOM = {"HAPROXY_DOM": "example.com"}

# The table "Environment of the HAProxy image" in ARCHITECTURE.md, as a user reads it.
CONTRACT_DEFAULTS = {
    "HAPROXY_MAXCONN_GLOBAL": 50000,
    "HAPROXY_SPREAD_CHECKS": 5,
    "HAPROXY_MAX_SPREAD_CHECKS": "15000",
    "HAPROXY_RETRIES": 3,
    "HAPROXY_BACKLOG": 10000,
    "HAPROXY_MAXCONN": 10000,
    "HAPROXY_TIMEOUT_CONNECT": "3s",
    "HAPROXY_TIMEOUT_CLIENT": "30s",
    "HAPROXY_TIMEOUT_SERVER": "30s",
    "HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE": "1s",
    "HAPROXY_TIMEOUT_HTTP_REQUEST": "15s",
    "HAPROXY_TIMEOUT_QUEUE": "30s",
}
# Added with issue "routing": long-lived connections.
CONTRACT_DEFAULTS["HAPROXY_TIMEOUT_TUNNEL"] = "1h"
# Variables this project added beyond the original design (documented in the README).
OWN_DEFAULTS = {
    "HAPROXY_HTTP_PORT": 8080,
    "HAPROXY_STATS_PORT": 4444,
    "HAPROXY_RELOAD_STRATEGY": "seamless",
    "HAPROXY_DRAIN_SECONDS": 5.0,
    "HAPROXY_HARD_STOP_AFTER": "30s",
    "HAPROXY_RUNTIME_API": True,
    "HAPROXY_SERVER_DRAIN_TIMEOUT": 30.0,
    "CONSUL_LB_STATE_DIR": Path("/var/lib/consul-lb"),
    "HAPROXY_RUNTIME_PORT": 4445,
    "HAPROXY_HEALTH_WARNING": "exclude",
    "CONSUL_LB_TEMPLATES": (),
    "CONSUL_LB_RESYNC_INTERVAL": 300.0,
    "HAPROXY_GROUPS": ("*",),
    "HAPROXY_STICKY_KEY": None,
    "HAPROXY_STATS_USER": None,
    "HAPROXY_STATS_PASSWORD": None,
}
# variable -> (raw override, the value it gives, invalid raw values)
CASES: dict[str, tuple[str, object, tuple[str, ...]]] = {
    "HAPROXY_MAXCONN_GLOBAL": ("20000", 20000, ("0", "-1", "lots", "1e5", "10001000")),
    "HAPROXY_SPREAD_CHECKS": ("0", 0, ("51", "five", "-5")),
    "HAPROXY_MAX_SPREAD_CHECKS": ("2s", "2s", ("soon", "2 s", "-1")),
    "HAPROXY_RETRIES": ("0", 0, ("101", "3.0", "3\nretries 9")),
    "HAPROXY_BACKLOG": ("512", 512, ("0", "1000001", "1k")),
    "HAPROXY_MAXCONN": ("3000", 3000, ("0", "3.5", "10000001")),
    "HAPROXY_TIMEOUT_CONNECT": ("500ms", "500ms", ("3 s", "3sec", "-1s", "3s\ntimeout queue 0")),
    "HAPROXY_TIMEOUT_CLIENT": ("1m", "1m", ("1 m", "forever", "30s # x")),
    "HAPROXY_TIMEOUT_SERVER": ("45s", "45s", ("45x", "s")),
    "HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE": ("250", "250", ("1.5s", "1y")),
    "HAPROXY_TIMEOUT_HTTP_REQUEST": ("10s", "10s", ("10s;", "'10s'")),
    "HAPROXY_TIMEOUT_QUEUE": ("1h", "1h", ("1234567890s", "h")),
    "HAPROXY_HTTP_PORT": ("80", 80, ("0", "65536", "http")),
    "HAPROXY_STATS_PORT": ("9000", 9000, ("0", "70000", "-1")),
    "HAPROXY_RELOAD_STRATEGY": ("syn-drop", "syn-drop", ("iptables", "SEAMLESS")),
    "HAPROXY_DRAIN_SECONDS": ("2s", 2.0, ("soon", "-1s", "2 s")),
    "HAPROXY_HARD_STOP_AFTER": ("5m", "5m", ("5 m", "never")),
    "HAPROXY_RUNTIME_API": ("false", False, ("maybe", "2", "enabled")),
    "HAPROXY_SERVER_DRAIN_TIMEOUT": ("2m", 120.0, ("later", "-5s")),
    "CONSUL_LB_STATE_DIR": (
        "/run/consul-lb",
        Path("/run/consul-lb"),
        ("relative/dir", "/var/lib/a b", "/x\nstats socket /tmp/evil", "/x#y"),
    ),
    "HAPROXY_RUNTIME_PORT": ("9100", 9100, ("0", "65536", "port")),
    "HAPROXY_HEALTH_WARNING": ("include", "include", ("yes", "warning", "1")),
    "CONSUL_LB_TEMPLATES": (
        "/tmp:/etc",
        (Path("/tmp"), Path("/etc")),
        ("/nonexistent-templates", "/etc/hostname", "/tmp:/missing"),
    ),
    "CONSUL_LB_RESYNC_INTERVAL": ("10m", 600.0, ("often", "-1m")),
    "HAPROXY_TIMEOUT_TUNNEL": ("2h", "2h", ("forever", "1 h")),
    "HAPROXY_GROUPS": ("internal,external", ("external", "internal"), ("Internal", "a b", ",")),
    "HAPROXY_STICKY_KEY": (
        "0123456789abcdef",
        "0123456789abcdef",
        ("short", "has space here", "has#hash1"),
    ),
}
# Read by both modes (Settings.common, and template mode's Common).
COMMON_CASES: dict[str, tuple[str, object, object, tuple[str, ...]]] = {
    "CONSUL_LB_LOG_LEVEL": ("debug", "debug", "info", ("verbose", "5")),
    "CONSUL_LB_LOG_FORMAT": ("json", "json", "text", ("xml", "logfmt")),
    "CONSUL_LB_MAX_CONNS": ("16", 16, 64, ("2", "lots", "0")),
    "CONSUL_LB_MAX_STALE": ("0", 0.0, 2.0, ("stale", "-2s")),
}


def field_of(variable: str) -> str:
    return VARIABLES[variable][0]


# Set together only: covered by test_stats_user_and_password_go_together.
PAIRED = {"HAPROXY_STATS_USER", "HAPROXY_STATS_PASSWORD"}


def test_every_variable_is_covered() -> None:
    assert set(CASES) | PAIRED == set(VARIABLES)
    assert set(CONTRACT_DEFAULTS) | set(OWN_DEFAULTS) == set(VARIABLES)
    assert set(COMMON_CASES) == set(COMMON_VARIABLES)


@pytest.mark.parametrize("variable", sorted(COMMON_CASES))
def test_common_variables_default_override_invalid(variable: str) -> None:
    raw, expected, default, bad = COMMON_CASES[variable]
    field = COMMON_VARIABLES[variable][0]
    assert getattr(from_env(DOM).common, field) == default
    assert getattr(common_from_env({}), field) == default
    assert getattr(from_env({**DOM, variable: raw}).common, field) == expected
    assert getattr(common_from_env({variable: raw}), field) == expected
    for value in bad:
        with pytest.raises(SettingsError, match=f"{variable}:"):
            from_env({**DOM, variable: value})
        with pytest.raises(SettingsError, match=f"{variable}:"):
            common_from_env({variable: value})


def test_the_three_ports_must_differ() -> None:
    with pytest.raises(SettingsError, match="HAPROXY_STATS_PORT and HAPROXY_RUNTIME_PORT"):
        from_env({**DOM, "HAPROXY_RUNTIME_PORT": "4444"})
    with pytest.raises(SettingsError, match="HAPROXY_HTTP_PORT and HAPROXY_RUNTIME_PORT"):
        from_env({**DOM, "HAPROXY_RUNTIME_PORT": "8080"})


@pytest.mark.parametrize("variable", sorted({**CONTRACT_DEFAULTS, **OWN_DEFAULTS}))
def test_default_when_unset(variable: str) -> None:
    expected = {**CONTRACT_DEFAULTS, **OWN_DEFAULTS}[variable]
    assert getattr(from_env(DOM), field_of(variable)) == expected


@pytest.mark.parametrize("variable", sorted(VARIABLES))
def test_empty_value_means_default(variable: str) -> None:
    assert from_env({**DOM, variable: "  "}) == from_env(DOM)


@pytest.mark.parametrize("variable", sorted(CASES))
def test_override(variable: str) -> None:
    raw, expected, _ = CASES[variable]
    settings = from_env({**DOM, variable: raw})
    assert getattr(settings, field_of(variable)) == expected
    # Nothing else changes.
    others = {f: v for f, v in vars(settings).items() if f != field_of(variable)}
    assert others == {f: v for f, v in vars(from_env(DOM)).items() if f != field_of(variable)}


def test_override_ignores_surrounding_whitespace() -> None:
    assert from_env({**DOM, "HAPROXY_RETRIES": " 7\n"}).retries == 7


@pytest.mark.parametrize(
    ("variable", "raw"),
    [(variable, raw) for variable, (_, _, bad) in sorted(CASES.items()) for raw in bad],
)
def test_invalid_value_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({**DOM, variable: raw})
    message = str(caught.value)
    assert f"{variable}:" in message
    # One problem, one line: the bad value cannot break the message apart.
    assert message.count("\n") == 1


def test_missing_domain_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="HAPROXY_DOM is required"):
        from_env({})


def test_blank_domain_counts_as_missing() -> None:
    with pytest.raises(SettingsError, match="HAPROXY_DOM is required"):
        from_env({"HAPROXY_DOM": "   "})


@pytest.mark.parametrize(
    ("raw", "domain"),
    [
        ("example.com", "example.com"),
        ("Apps.Example.COM", "apps.example.com"),
        ("example.com.", "example.com"),
        ("localhost", "localhost"),
    ],
)
def test_domain_override(raw: str, domain: str) -> None:
    assert from_env({"HAPROXY_DOM": raw}).domain == domain


@pytest.mark.parametrize(
    "raw",
    [
        "exa mple.com",
        "example..com",
        "-example.com",
        "example.com\nlisten evil",
        "ex_ample.com",
        "*.example.com",
        "a" * 64 + ".com",
        ".".join(["abcdefghi"] * 26),  # 259 characters
    ],
)
def test_invalid_domain(raw: str) -> None:
    with pytest.raises(SettingsError, match="HAPROXY_DOM:"):
        from_env({"HAPROXY_DOM": raw})


def test_render_wait_default() -> None:
    settings = from_env(DOM)
    assert (settings.render_wait_min, settings.render_wait_max) == (0.1, 1.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("500ms:5s", (0.5, 5.0)), ("2s", (2.0, 8.0)), ("1s:1s", (1.0, 1.0))],
)
def test_render_wait_override(raw: str, expected: tuple[float, float]) -> None:
    settings = from_env({**DOM, "HAPROXY_RENDER_WAIT": raw})
    assert (settings.render_wait_min, settings.render_wait_max) == expected


@pytest.mark.parametrize("raw", ["5s:1s", "soon", "1s:", ":1s", "1s:2s:3s"])
def test_render_wait_invalid(raw: str) -> None:
    with pytest.raises(SettingsError, match="HAPROXY_RENDER_WAIT:"):
        from_env({**DOM, "HAPROXY_RENDER_WAIT": raw})


def test_http_and_stats_port_must_differ() -> None:
    with pytest.raises(SettingsError, match="HAPROXY_HTTP_PORT and HAPROXY_STATS_PORT"):
        from_env({**DOM, "HAPROXY_HTTP_PORT": "4444"})
    with pytest.raises(SettingsError, match="HAPROXY_HTTP_PORT and HAPROXY_STATS_PORT"):
        from_env({**DOM, "HAPROXY_STATS_PORT": "8080"})
    swapped = from_env({**DOM, "HAPROXY_HTTP_PORT": "4444", "HAPROXY_STATS_PORT": "8080"})
    assert (swapped.http_port, swapped.stats_port) == (4444, 8080)


def test_all_problems_reported_at_once() -> None:
    env = {
        "HAPROXY_MAXCONN": "many",
        "HAPROXY_TIMEOUT_CLIENT": "30 s",
        "HAPROXY_RENDER_WAIT": "9s:1s",
        "CONSUL_LB_STATE_DIR": "state",
    }
    with pytest.raises(SettingsError) as caught:
        from_env(env)
    message = str(caught.value)
    for name in ("HAPROXY_DOM", *env):
        assert name in message
    assert message.count("\n") == len(env) + 1  # a heading, then one line per problem


def test_unrelated_variables_are_ignored() -> None:
    assert from_env({**DOM, "HAPROXY_UNKNOWN": "x", "PATH": "/bin"}) == Settings("example.com")


def test_public_is_plain_strings() -> None:
    public = from_env(DOM).public()
    assert public["domain"] == "example.com"
    assert public["maxconn_global"] == "50000"
    assert public["state_dir"] == "/var/lib/consul-lb"
    assert all(isinstance(v, str) for v in public.values())


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("example.com", True),
        ("a", True),
        ("x-1.example.com", True),
        ("", False),
        ("Example.com", False),
        ("example.com\n", False),
        ("www\n.example.com", False),
        ("a-.com", False),
        ("a" * 63 + ".com", True),
        ("a" * 64 + ".com", False),
    ],
)
def test_is_dns_name(name: str, ok: bool) -> None:
    assert is_dns_name(name) is ok


@pytest.mark.parametrize("strategy", RELOAD_STRATEGIES)
def test_every_accepted_reload_strategy_has_a_supervisor(strategy: str) -> None:
    haproxy = make(strategy, Paths(Path("/nonexistent")))
    assert haproxy.strategy == strategy


def test_groups_star_means_everything() -> None:
    assert from_env({**DOM, "HAPROXY_GROUPS": "internal,*"}).groups == ("*",)


def test_stats_user_and_password_go_together(tmp_path: Path) -> None:
    ok = from_env({**DOM, "HAPROXY_STATS_USER": "admin", "HAPROXY_STATS_PASSWORD": "s3cret-pass"})
    assert (ok.stats_user, ok.stats_password) == ("admin", "s3cret-pass")
    secret = tmp_path / "password"
    secret.write_text("from-a-file-123\n")
    env = {**DOM, "HAPROXY_STATS_USER": "admin", "HAPROXY_STATS_PASSWORD_FILE": str(secret)}
    assert from_env(env).stats_password == "from-a-file-123"
    for lonely in ({"HAPROXY_STATS_USER": "admin"}, {"HAPROXY_STATS_PASSWORD": "s3cret-pass"}):
        with pytest.raises(SettingsError, match="go together"):
            from_env({**DOM, **lonely})
    for bad in ("short", "with space", 'quote"d-pass', "hash#password"):
        with pytest.raises(SettingsError, match="HAPROXY_STATS_PASSWORD:"):
            from_env({**DOM, "HAPROXY_STATS_USER": "admin", "HAPROXY_STATS_PASSWORD": bad})
    missing = {**DOM, "HAPROXY_STATS_USER": "admin", "HAPROXY_STATS_PASSWORD_FILE": "/nope"}
    with pytest.raises(SettingsError, match="HAPROXY_STATS_PASSWORD_FILE: cannot read /nope"):
        from_env(missing)


def test_secrets_are_redacted_from_public() -> None:
    env = {
        **DOM,
        "HAPROXY_STICKY_KEY": "sticky-key-1234",
        "HAPROXY_STATS_USER": "admin",
        "HAPROXY_STATS_PASSWORD": "s3cret-pass",
    }
    public = from_env(env).public()
    assert "sticky-key-1234" not in str(public) and "s3cret-pass" not in str(public)
    assert public["stats_user"] == "admin"
    assert sorted(from_env(env).secrets()) == ["s3cret-pass", "sticky-key-1234"]

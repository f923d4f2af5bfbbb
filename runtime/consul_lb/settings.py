"""HAPROXY_* environment -> typed settings, with the defaults of the original design.

Every problem is collected and reported at once, so an operator fixes a bad deployment
in one round instead of one variable per restart.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from consul_lb.acme import settings as acme_settings
from consul_lb.acme.settings import AcmeSettings
from consul_lb.durations import DurationError, parse_duration, parse_wait
from consul_lb.tls import settings as tls_settings
from consul_lb.tls.settings import TlsSettings

# HAProxy time format: a number with an optional unit (milliseconds without one).
# `\Z`, not `$`: `$` also matches before a trailing newline.
HAPROXY_TIME = re.compile(r"^[0-9]{1,9}(us|ms|s|m|h|d)?\Z")
# A group name (HAPROXY.GROUP, HAPROXY_GROUPS).
GROUP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# The state directory is written into haproxy.cfg unquoted (admin socket, state file).
STATE_DIR = re.compile(r"^/[A-Za-z0-9._/-]{0,200}\Z")
# See runtime/consul_lb/haproxy/process.py; the first is the default.
RELOAD_STRATEGIES = ("seamless", "syn-drop", "naive")


class SettingsError(ValueError):
    """One or more variables are missing or invalid; ``problems`` lists all of them, one
    line each, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


def is_dns_name(value: str) -> bool:
    """A lower-case DNS name of at most 253 characters (labels separated by dots)."""
    return 0 < len(value) <= 253 and all(DNS_LABEL.match(label) for label in value.split("."))


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
HEALTH_WARNING = ("exclude", "include")


@dataclass(frozen=True)
class Common:
    """What both modes read: logging and how Consul is read."""

    log_level: str = "info"
    log_format: str = "text"
    # Connections to Consul, all watches and reads together (Consul's agent resets those
    # above limits.http_max_conns_per_client, 200 per client address by default).
    max_conns: int = 64
    # Reads may come from any Consul server up to this stale (consul-template's
    # max_stale), seconds; 0: every read from the leader.
    max_stale: float = 2.0


@dataclass(frozen=True)
class Settings:
    """Everything the HAProxy mode reads from its environment."""

    domain: str
    maxconn_global: int = 50000
    spread_checks: int = 5
    max_spread_checks: str = "15000"  # HAProxy time: milliseconds without a unit
    retries: int = 3
    backlog: int = 10000
    maxconn: int = 10000
    timeout_connect: str = "3s"
    timeout_client: str = "30s"
    timeout_server: str = "30s"
    timeout_http_keep_alive: str = "1s"
    timeout_http_request: str = "15s"
    timeout_queue: str = "30s"
    # Idle upgraded connections (WebSocket, CONNECT) live this long; without it they
    # end after timeout client/server.
    timeout_tunnel: str = "1h"
    http_port: int = 8080
    stats_port: int = 4444
    reload_strategy: str = "seamless"
    # Quiescence window for rendering (consul-template's `wait min:max`), seconds.
    render_wait_min: float = 0.1
    render_wait_max: float = 1.0
    # Seconds the health URI reports "down" before HAProxy soft-stops on SIGTERM.
    drain_seconds: float = 5.0
    hard_stop_after: str = "30s"
    # Server-only changes through HAProxy's runtime API instead of a reload.
    runtime_api: bool = True
    # Longest a removed server drains before its remaining connections are closed.
    server_drain_timeout: float = 30.0
    state_dir: Path = Path("/var/lib/consul-lb")
    # Loopback port of the runtime's metrics and state server (behind the stats port).
    runtime_port: int = 4445
    # Operator template directories searched before the shipped templates.
    templates: tuple[Path, ...] = ()
    # Every watched service is read again this often (seconds; 0: never) to heal
    # anything a watch missed.
    resync_interval: float = 300.0
    # "include": instances whose checks are in warning stay published.
    health_warning: str = "exclude"
    # Groups of services this load balancer publishes ("*": all); HAPROXY.GROUP.
    groups: tuple[str, ...] = ("*",)
    # Key of the sticky-session cookies (HAProxy's dynamic-cookie-key); None: derived
    # from HAPROXY_DOM (same on every load balancer of a fleet, but guessable).
    sticky_key: str | None = field(default=None, repr=False)
    # Basic auth for the stats page and the runtime's endpoints (not the health URI).
    stats_user: str | None = None
    stats_password: str | None = field(default=None, repr=False)
    common: Common = Common()
    # HTTPS frontend, certificate sources, TLS to backends (consul_lb/tls/settings.py).
    tls: TlsSettings = TlsSettings()  # noqa: RUF009 (frozen: one shared default is safe)
    # Certificates from ACME, coordinated through Consul (consul_lb/acme/settings.py).
    acme: AcmeSettings = AcmeSettings()  # noqa: RUF009 (frozen, as above)

    def secrets(self) -> list[str]:
        """Values no log line, endpoint or printed configuration may show."""
        return [v for v in (self.sticky_key, self.stats_password) if v]

    def public(self) -> dict[str, Any]:
        """Settings as plain values (for the dry run and the state endpoint), secrets
        redacted."""
        hidden = {"sticky_key", "stats_password"}
        return {
            f.name: "<redacted>"
            if f.name in hidden and getattr(self, f.name)
            else str(getattr(self, f.name))
            for f in fields(self)
        }


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"[0-9]{1,10}", raw):
            raise ValueError(f"expected a whole number, got {raw!r}")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected {low}..{high}, got {value}")
        return value

    return parse


def _haproxy_time(raw: str) -> str:
    if not HAPROXY_TIME.match(raw):
        raise ValueError(f"expected an HAProxy time such as 500ms, 3s or 1m, got {raw!r}")
    return raw


def _domain(raw: str) -> str:
    value = raw.strip().rstrip(".").lower()
    if not is_dns_name(value):
        raise ValueError(f"expected a DNS name such as example.com, got {raw!r}")
    return value


def _strategy(raw: str) -> str:
    if raw not in RELOAD_STRATEGIES:
        raise ValueError(f"expected one of {', '.join(RELOAD_STRATEGIES)}, got {raw!r}")
    return raw


def _state_dir(raw: str) -> Path:
    if not STATE_DIR.match(raw):
        raise ValueError(
            f"expected an absolute path of letters, digits, '.', '_', '-' and '/', got {raw!r}"
        )
    return Path(raw)


def _seconds(raw: str) -> float:
    try:
        return parse_duration(raw)
    except DurationError as exc:
        raise ValueError(str(exc)) from exc


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _template_dirs(raw: str) -> tuple[Path, ...]:
    dirs = tuple(Path(p) for p in raw.split(":") if p)
    for d in dirs:
        if not d.is_dir():
            raise ValueError(f"{str(d)!r} is not a directory")
        if not os.access(d, os.R_OK | os.X_OK):
            raise ValueError(f"{str(d)!r} is not readable")
    return dirs


def _groups(raw: str) -> tuple[str, ...]:
    names = tuple(sorted({g.strip() for g in raw.split(",") if g.strip()}))
    if "*" in names:
        return ("*",)
    for name in names:
        if not GROUP.match(name):
            raise ValueError(
                f"expected group names (lower-case letters, digits, '_', '-') or *, got {raw!r}"
            )
    if not names:
        raise ValueError(f"expected one or more group names, got {raw!r}")
    return names


# A secret written into haproxy.cfg: printable ASCII without what HAProxy's parser reads
# specially (whitespace, quotes, backslash, '#').
SECRET = re.compile(r"^[!$-&(-\[\]-~]{8,128}\Z")


def _secret(raw: str) -> str:
    if not SECRET.match(raw):
        raise ValueError(
            "expected 8 to 128 printable characters without spaces, quotes, '\\' or '#'"
        )
    return raw


def _user(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", raw):
        raise ValueError(f"expected a user name of letters, digits, '.', '_', '-', got {raw!r}")
    return raw


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


PORT = _int(1, 65535)

# variable -> (field, parser). The defaults live on the dataclass.
VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HAPROXY_MAXCONN_GLOBAL": ("maxconn_global", _int(1, 10_000_000)),
    "HAPROXY_SPREAD_CHECKS": ("spread_checks", _int(0, 50)),
    "HAPROXY_MAX_SPREAD_CHECKS": ("max_spread_checks", _haproxy_time),
    "HAPROXY_RETRIES": ("retries", _int(0, 100)),
    "HAPROXY_BACKLOG": ("backlog", _int(1, 1_000_000)),
    "HAPROXY_MAXCONN": ("maxconn", _int(1, 10_000_000)),
    "HAPROXY_TIMEOUT_CONNECT": ("timeout_connect", _haproxy_time),
    "HAPROXY_TIMEOUT_CLIENT": ("timeout_client", _haproxy_time),
    "HAPROXY_TIMEOUT_SERVER": ("timeout_server", _haproxy_time),
    "HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE": ("timeout_http_keep_alive", _haproxy_time),
    "HAPROXY_TIMEOUT_HTTP_REQUEST": ("timeout_http_request", _haproxy_time),
    "HAPROXY_TIMEOUT_QUEUE": ("timeout_queue", _haproxy_time),
    "HAPROXY_TIMEOUT_TUNNEL": ("timeout_tunnel", _haproxy_time),
    "HAPROXY_HTTP_PORT": ("http_port", PORT),
    "HAPROXY_STATS_PORT": ("stats_port", PORT),
    "HAPROXY_RELOAD_STRATEGY": ("reload_strategy", _strategy),
    "HAPROXY_DRAIN_SECONDS": ("drain_seconds", _seconds),
    "HAPROXY_HARD_STOP_AFTER": ("hard_stop_after", _haproxy_time),
    "HAPROXY_RUNTIME_API": ("runtime_api", _bool),
    "HAPROXY_SERVER_DRAIN_TIMEOUT": ("server_drain_timeout", _seconds),
    "CONSUL_LB_STATE_DIR": ("state_dir", _state_dir),
    "HAPROXY_RUNTIME_PORT": ("runtime_port", PORT),
    "HAPROXY_HEALTH_WARNING": ("health_warning", _choice(*HEALTH_WARNING)),
    "CONSUL_LB_TEMPLATES": ("templates", _template_dirs),
    "CONSUL_LB_RESYNC_INTERVAL": ("resync_interval", _seconds),
    "HAPROXY_GROUPS": ("groups", _groups),
    "HAPROXY_STICKY_KEY": ("sticky_key", _secret),
    "HAPROXY_STATS_USER": ("stats_user", _user),
    "HAPROXY_STATS_PASSWORD": ("stats_password", _secret),
}
# Read by both modes, into Common.
COMMON_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CONSUL_LB_LOG_LEVEL": ("log_level", _choice(*LOG_LEVELS)),
    "CONSUL_LB_LOG_FORMAT": ("log_format", _choice(*LOG_FORMATS)),
    "CONSUL_LB_MAX_CONNS": ("max_conns", _int(3, 10_000)),
    "CONSUL_LB_MAX_STALE": ("max_stale", _seconds),
}


def _read(
    env: Mapping[str, str], variables: Mapping[str, tuple[str, Callable[[str], Any]]]
) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, (attr, parse) in variables.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[attr] = parse(raw.strip())
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
    return values, errors


def common_from_env(env: Mapping[str, str]) -> Common:
    """Logging and Consul-reading settings; SettingsError naming every bad variable."""
    values, errors = _read(env, COMMON_VARIABLES)
    if errors:
        raise SettingsError(errors)
    return Common(**values)


def from_env(env: Mapping[str, str]) -> Settings:
    """Read the settings; raise SettingsError naming every bad or missing variable."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    raw_dom = env.get("HAPROXY_DOM", "").strip()
    if not raw_dom:
        errors.append("HAPROXY_DOM is required: the domain services are published under")
    else:
        try:
            values["domain"] = _domain(raw_dom)
        except ValueError as exc:
            errors.append(f"HAPROXY_DOM: {exc}")
    read, bad = _read(env, VARIABLES)
    values.update(read)
    errors += bad
    common, bad = _read(env, COMMON_VARIABLES)
    errors += bad
    raw_wait = env.get("HAPROXY_RENDER_WAIT", "").strip()
    if raw_wait:
        try:
            values["render_wait_min"], values["render_wait_max"] = parse_wait(raw_wait)
        except DurationError as exc:
            errors.append(f"HAPROXY_RENDER_WAIT: {exc}")
    password_file = env.get("HAPROXY_STATS_PASSWORD_FILE", "").strip()
    if password_file and "stats_password" not in values:
        try:
            values["stats_password"] = _secret(Path(password_file).read_text().strip())
        except OSError as exc:
            errors.append(
                f"HAPROXY_STATS_PASSWORD_FILE: cannot read {password_file}: {exc.strerror}"
            )
        except ValueError as exc:
            errors.append(f"HAPROXY_STATS_PASSWORD_FILE: {exc}")
    given = {
        v
        for v in ("HAPROXY_STATS_USER", "HAPROXY_STATS_PASSWORD", "HAPROXY_STATS_PASSWORD_FILE")
        if env.get(v, "").strip()
    }
    if ("HAPROXY_STATS_USER" in given) != bool(given - {"HAPROXY_STATS_USER"}):
        errors.append(
            "HAPROXY_STATS_USER and HAPROXY_STATS_PASSWORD (or HAPROXY_STATS_PASSWORD_FILE) "
            "go together"
        )
    tls, bad = tls_settings.read(env)
    errors += bad
    acme, bad = acme_settings.read(env)
    errors += bad + acme_settings.check(acme, tls)
    ports = {
        "HAPROXY_HTTP_PORT": values.get("http_port", 8080),
        "HAPROXY_STATS_PORT": values.get("stats_port", 4444),
        "HAPROXY_RUNTIME_PORT": values.get("runtime_port", 4445),
        "HAPROXY_HTTPS_PORT": tls.https_port,
    }
    for (a, pa), (b, pb) in itertools.combinations(ports.items(), 2):
        if pa == pb:
            errors.append(f"{a} and {b} must differ (both {pa})")
    if errors:
        raise SettingsError(errors)
    return Settings(**values, common=Common(**common), tls=tls, acme=acme)

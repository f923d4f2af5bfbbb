"""HAPROXY_* environment -> typed settings, with the defaults of the original design.

Every problem is collected and reported at once, so an operator fixes a bad deployment
in one round instead of one variable per restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from consul_lb.acme import settings as acme_settings
from consul_lb.acme.settings import AcmeSettings
from consul_lb.durations import DurationError, parse_wait
from consul_lb.env_values import (
    boolean,
    choice,
    domain,
    groups,
    haproxy_time,
    int_range,
    seconds,
    secret,
    state_dir,
    template_dirs,
    user,
)
from consul_lb.tls import settings as tls_settings
from consul_lb.tls.settings import TlsSettings

# See runtime/consul_lb/haproxy/process.py; the first is the default.
RELOAD_STRATEGIES = ("seamless", "syn-drop", "naive")


class SettingsError(ValueError):
    """One or more variables are missing or invalid; ``problems`` lists all of them, one
    line each, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


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


def _strategy(raw: str) -> str:
    if raw not in RELOAD_STRATEGIES:
        raise ValueError(f"expected one of {', '.join(RELOAD_STRATEGIES)}, got {raw!r}")
    return raw


PORT = int_range(1, 65535)

# variable -> (field, parser). The defaults live on the dataclass.
VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HAPROXY_MAXCONN_GLOBAL": ("maxconn_global", int_range(1, 10_000_000)),
    "HAPROXY_SPREAD_CHECKS": ("spread_checks", int_range(0, 50)),
    "HAPROXY_MAX_SPREAD_CHECKS": ("max_spread_checks", haproxy_time),
    "HAPROXY_RETRIES": ("retries", int_range(0, 100)),
    "HAPROXY_BACKLOG": ("backlog", int_range(1, 1_000_000)),
    "HAPROXY_MAXCONN": ("maxconn", int_range(1, 10_000_000)),
    "HAPROXY_TIMEOUT_CONNECT": ("timeout_connect", haproxy_time),
    "HAPROXY_TIMEOUT_CLIENT": ("timeout_client", haproxy_time),
    "HAPROXY_TIMEOUT_SERVER": ("timeout_server", haproxy_time),
    "HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE": ("timeout_http_keep_alive", haproxy_time),
    "HAPROXY_TIMEOUT_HTTP_REQUEST": ("timeout_http_request", haproxy_time),
    "HAPROXY_TIMEOUT_QUEUE": ("timeout_queue", haproxy_time),
    "HAPROXY_TIMEOUT_TUNNEL": ("timeout_tunnel", haproxy_time),
    "HAPROXY_HTTP_PORT": ("http_port", PORT),
    "HAPROXY_STATS_PORT": ("stats_port", PORT),
    "HAPROXY_RELOAD_STRATEGY": ("reload_strategy", _strategy),
    "HAPROXY_DRAIN_SECONDS": ("drain_seconds", seconds),
    "HAPROXY_HARD_STOP_AFTER": ("hard_stop_after", haproxy_time),
    "HAPROXY_RUNTIME_API": ("runtime_api", boolean),
    "HAPROXY_SERVER_DRAIN_TIMEOUT": ("server_drain_timeout", seconds),
    "CONSUL_LB_STATE_DIR": ("state_dir", state_dir),
    "HAPROXY_RUNTIME_PORT": ("runtime_port", PORT),
    "HAPROXY_HEALTH_WARNING": ("health_warning", choice(*HEALTH_WARNING)),
    "CONSUL_LB_TEMPLATES": ("templates", template_dirs),
    "CONSUL_LB_RESYNC_INTERVAL": ("resync_interval", seconds),
    "HAPROXY_GROUPS": ("groups", groups),
    "HAPROXY_STICKY_KEY": ("sticky_key", secret),
    "HAPROXY_STATS_USER": ("stats_user", user),
    "HAPROXY_STATS_PASSWORD": ("stats_password", secret),
}
# Read by both modes, into Common.
COMMON_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CONSUL_LB_LOG_LEVEL": ("log_level", choice(*LOG_LEVELS)),
    "CONSUL_LB_LOG_FORMAT": ("log_format", choice(*LOG_FORMATS)),
    "CONSUL_LB_MAX_CONNS": ("max_conns", int_range(3, 10_000)),
    "CONSUL_LB_MAX_STALE": ("max_stale", seconds),
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
            values["domain"] = domain(raw_dom)
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
            values["stats_password"] = secret(Path(password_file).read_text().strip())
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

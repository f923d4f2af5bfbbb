"""``HAPROXY.*`` service tags -> typed per-service options.

Every value is checked against a closed pattern before it can reach the template, so a
tag can never carry whitespace, a newline, a ``#`` or a quote into haproxy.cfg. Tags that
do not start with ``HAPROXY.`` belong to someone else and are ignored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from consul_lb.model import values

PREFIX = "HAPROXY."
PROTOCOLS = ("http", "tcp")
# HAProxy's balance algorithms that take no argument, plus the argument forms below.
BALANCE_SIMPLE = (
    "first",
    "leastconn",
    "random",
    "rdp-cookie",
    "roundrobin",
    "source",
    "static-rr",
    "uri",
)
BALANCE_ARG = re.compile(r"(hdr|rdp-cookie)\([A-Za-z0-9_-]{1,64}\)|url_param [A-Za-z0-9_-]{1,64}")
# Algorithms that read HTTP: HAProxy falls back to roundrobin for them in tcp mode.
HTTP_ONLY_BALANCE = ("uri", "url_param", "hdr(")
# Ports HAProxy itself listens on in every configuration.
MAX_PORT = 65535


class TagError(ValueError):
    """A service's tags cannot be published; the message says which tag and why."""


EXTERNAL = "external"  # the group of a service without HAPROXY.GROUP (marathon-lb's)


@dataclass(frozen=True)
class ServiceOptions:
    enabled: bool = False
    protocol: str = "http"
    balance: str = "roundrobin"
    maxconn: int | None = None
    frontend_port: int | None = None
    hosts: tuple[str, ...] = ()  # aliases besides <service>.<domain>
    path: str | None = None  # path prefix routed to the service
    strip_path: bool = False
    sticky: bool = False
    healthcheck_path: str | None = None
    group: str = EXTERNAL
    allow: tuple[str, ...] = ()  # client networks; empty: everyone
    redirect_https: bool = False  # plain-http requests get a 308 to https
    hsts: int | None = None  # Strict-Transport-Security max-age, seconds
    backend_tls: bool = False  # HAProxy speaks TLS to the instances
    acme: bool = False  # a certificate for the service's hosts from HAPROXY_ACME_DIRECTORY


def _bool(raw: str) -> bool:
    if raw.lower() in {"true", "false"}:
        return raw.lower() == "true"
    raise TagError(f"expected true or false, got {printable(raw)}")


def _protocol(raw: str) -> str:
    if raw in PROTOCOLS:
        return raw
    raise TagError(f"expected one of {', '.join(PROTOCOLS)}, got {printable(raw)}")


def _balance(raw: str) -> str:
    # fullmatch: `$` would let a trailing newline through into haproxy.cfg.
    if raw in BALANCE_SIMPLE or BALANCE_ARG.fullmatch(raw):
        return raw
    raise TagError(
        f"unknown balance algorithm {printable(raw)}; "
        f"expected one of {', '.join(BALANCE_SIMPLE)}, "
        "hdr(<name>), rdp-cookie(<name>) or 'url_param <name>'"
    )


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"[0-9]{1,7}", raw) or not low <= int(raw) <= high:
            raise TagError(f"expected a whole number {low}..{high}, got {printable(raw)}")
        return int(raw)

    return parse


# Ten years: above any HSTS max-age in use (two years is the preload list's minimum).
HSTS_MAX = 315_360_000


def _max_age(raw: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) > HSTS_MAX:
        raise TagError(f"expected a max-age in seconds 0..{HSTS_MAX}, got {printable(raw)}")
    return int(raw)


def _value(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser of model/values.py, its ValueError as a TagError."""

    def tag(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise TagError(str(exc).replace(repr(raw), printable(raw))) from None

    return tag


# tag key (after the prefix) -> (field of ServiceOptions, parser)
TAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "ENABLE": ("enabled", _bool),
    "PROTOCOL": ("protocol", _protocol),
    "BACKEND.BALANCE": ("balance", _balance),
    "BACKEND.MAXCONN": ("maxconn", _bounded_int(1, 1_000_000)),
    "FRONTEND.PORT": ("frontend_port", _bounded_int(1, MAX_PORT)),
    "FRONTEND.HOSTS": ("hosts", _value(values.hosts)),
    "FRONTEND.PATH": ("path", _value(values.path)),
    "BACKEND.STRIP_PATH": ("strip_path", _bool),
    "BACKEND.STICKY": ("sticky", _bool),
    "BACKEND.HEALTHCHECK.PATH": ("healthcheck_path", _value(values.path)),
    "GROUP": ("group", _value(values.group)),
    "FRONTEND.ALLOW": ("allow", _value(values.networks)),
    "FRONTEND.REDIRECT_HTTPS": ("redirect_https", _bool),
    "FRONTEND.HSTS": ("hsts", _max_age),
    "BACKEND.TLS": ("backend_tls", _bool),
    "FRONTEND.ACME": ("acme", _bool),
}
# Options that read HTTP, refused for tcp services.
HTTP_ONLY = ("hosts", "path", "strip_path", "sticky", "healthcheck_path")


def parse_tags(tags: Iterable[str]) -> ServiceOptions:
    """Options from an instance's tags; TagError for unknown, malformed or conflicting
    tags. Thousands of instances carry the same tags: each distinct set is parsed once."""
    return _parse(tuple(sorted(set(tags))))


@functools.lru_cache(maxsize=4096)
def _parse(tags: tuple[str, ...]) -> ServiceOptions:
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for tag in sorted(set(tags)):
        if not tag.startswith(PREFIX):
            continue
        key, sep, raw = tag[len(PREFIX) :].partition("=")
        shown = printable(tag)
        if not sep:
            raise TagError(f"tag {shown} has no '=value'")
        if key not in TAGS:
            raise TagError(f"unknown tag {shown} (known: {', '.join(PREFIX + k for k in TAGS)})")
        if key in seen and seen[key] != raw:
            raise TagError(f"conflicting tags {PREFIX}{key}={printable(seen[key])} and {shown}")
        seen[key] = raw
        field, parse = TAGS[key]
        try:
            values[field] = parse(raw)
        except TagError as exc:
            raise TagError(f"tag {shown}: {exc}") from None
    options = ServiceOptions(**values)
    if options.protocol == "tcp" and options.balance.startswith(HTTP_ONLY_BALANCE):
        raise TagError(
            f"HAPROXY.BACKEND.BALANCE={options.balance} needs HTTP; tcp services can use "
            "roundrobin, static-rr, leastconn, first, source, random or rdp-cookie"
        )
    if options.protocol == "tcp":
        http_only = [k for k, (f, _) in TAGS.items() if f in HTTP_ONLY and f in values]
        if http_only:
            raise TagError(
                f"{', '.join(PREFIX + k for k in http_only)} need(s) HTTP: this is a tcp service"
            )
    if options.strip_path and options.path is None:
        raise TagError("HAPROXY.BACKEND.STRIP_PATH=true needs HAPROXY.FRONTEND.PATH=/<prefix>")
    if options.protocol == "tcp" and (options.redirect_https or options.hsts is not None):
        raise TagError(
            "HAPROXY.FRONTEND.REDIRECT_HTTPS and HAPROXY.FRONTEND.HSTS apply to http services"
        )
    if options.protocol == "tcp" and options.acme:
        # HTTP-01 is answered on the http frontend, for the hosts of an http service.
        raise TagError("HAPROXY.FRONTEND.ACME applies to http services")
    if options.protocol == "http" and options.frontend_port is not None:
        raise TagError(
            "HAPROXY.FRONTEND.PORT applies to tcp services; http services are routed "
            "by Host header on the shared frontend"
        )
    return options


def printable(text: str, limit: int = 80) -> str:
    """A value (a tag, an instance ID, an address) as one log line can show it: quoted,
    control characters escaped, cut short."""
    shown = text.encode("unicode_escape").decode("ascii")
    return repr(shown[:limit] + ("..." if len(shown) > limit else ""))

"""Closed patterns for the values of routing tags: host names, path prefixes, networks,
group names. Each parser returns a normalised value or raises ValueError saying what
was expected; nothing it accepts can carry whitespace, a quote, a ``#`` or a newline
into haproxy.cfg or a map file."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from consul_lb.env_values import GROUP

# One DNS label (RFC 1035 2.3.1, with digits first allowed as RFC 1123 2.1 does).
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# A path prefix: segments of RFC 3986 "unreserved" characters. Reserved characters and
# percent-encoding are left out on purpose: the prefix is also a map key and a regular
# expression in haproxy.cfg, where they would need escaping.
PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+\Z")
MAX_ITEMS = 32


def host(raw: str) -> str:
    """A host name, lower-cased, optionally ``*.`` + a name (every host under it)."""
    value = raw.strip(" ").lower()
    name = value[2:] if value.startswith("*.") else value
    labels = name.split(".")
    if not (0 < len(value) <= 253 and len(labels) >= 2 and all(LABEL.match(x) for x in labels)):
        raise ValueError(
            f"expected a host name such as www.example.com or *.example.com, got {raw!r}"
        )
    return value


def items(raw: str, parse: Callable[[str], str], what: str) -> tuple[str, ...]:
    """Comma-separated values, each parsed, without duplicates, sorted."""
    parts = [p for p in raw.split(",") if p.strip(" ")]
    if not parts:
        raise ValueError(f"expected one or more {what}, comma-separated")
    if len(parts) > MAX_ITEMS:
        raise ValueError(f"expected at most {MAX_ITEMS} {what}, got {len(parts)}")
    return tuple(sorted({parse(p) for p in parts}))


def hosts(raw: str) -> tuple[str, ...]:
    return items(raw, host, "host names")


def path(raw: str) -> str:
    if not PATH.match(raw) or len(raw) > 128:
        raise ValueError(
            "expected a path prefix such as /api or /shop/v2 (letters, digits, '.', '_', "
            f"'~', '-' between slashes, no trailing slash), got {raw!r}"
        )
    return raw


def network(raw: str) -> str:
    """A network in CIDR notation (a single address is a /32 or /128), normalised."""
    text = raw.strip(" ")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"expected a network such as 10.0.0.0/8 or 2001:db8::/32, got {raw!r}"
        ) from None
    if "%" in text:
        raise ValueError(f"a network cannot carry an IPv6 zone, got {raw!r}")
    return str(net)


def networks(raw: str) -> tuple[str, ...]:
    return items(raw, network, "networks")


def group(raw: str) -> str:
    if not GROUP.match(raw):
        raise ValueError(
            f"expected a group name (lower-case letters, digits, '_', '-'), got {raw!r}"
        )
    return raw

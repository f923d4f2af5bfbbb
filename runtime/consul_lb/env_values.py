"""Parsers of environment variables' values: each takes the raw string and returns the
typed value, or raises ValueError with what was expected (settings.py names the
variable). Patterns that other modules check values against live here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from consul_lb.durations import DurationError, parse_duration

# HAProxy time format: a number with an optional unit (milliseconds without one).
# `\Z`, not `$`: `$` also matches before a trailing newline.
HAPROXY_TIME = re.compile(r"^[0-9]{1,9}(us|ms|s|m|h|d)?\Z")
# A group name (HAPROXY.GROUP, HAPROXY_GROUPS).
GROUP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# The state directory is written into haproxy.cfg unquoted (admin socket, state file).
STATE_DIR = re.compile(r"^/[A-Za-z0-9._/-]{0,200}\Z")


def is_dns_name(value: str) -> bool:
    """A lower-case DNS name of at most 253 characters (labels separated by dots)."""
    return 0 < len(value) <= 253 and all(DNS_LABEL.match(label) for label in value.split("."))


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"[0-9]{1,10}", raw):
            raise ValueError(f"expected a whole number, got {raw!r}")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected {low}..{high}, got {value}")
        return value

    return parse


def haproxy_time(raw: str) -> str:
    if not HAPROXY_TIME.match(raw):
        raise ValueError(f"expected an HAProxy time such as 500ms, 3s or 1m, got {raw!r}")
    return raw


def domain(raw: str) -> str:
    value = raw.strip().rstrip(".").lower()
    if not is_dns_name(value):
        raise ValueError(f"expected a DNS name such as example.com, got {raw!r}")
    return value


def state_dir(raw: str) -> Path:
    if not STATE_DIR.match(raw):
        raise ValueError(
            f"expected an absolute path of letters, digits, '.', '_', '-' and '/', got {raw!r}"
        )
    return Path(raw)


def seconds(raw: str) -> float:
    try:
        return parse_duration(raw)
    except DurationError as exc:
        raise ValueError(str(exc)) from exc


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def template_dirs(raw: str) -> tuple[Path, ...]:
    dirs = tuple(Path(p) for p in raw.split(":") if p)
    for d in dirs:
        if not d.is_dir():
            raise ValueError(f"{str(d)!r} is not a directory")
        if not os.access(d, os.R_OK | os.X_OK):
            raise ValueError(f"{str(d)!r} is not readable")
    return dirs


def groups(raw: str) -> tuple[str, ...]:
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


def secret(raw: str) -> str:
    if not SECRET.match(raw):
        raise ValueError(
            "expected 8 to 128 printable characters without spaces, quotes, '\\' or '#'"
        )
    return raw


def user(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", raw):
        raise ValueError(f"expected a user name of letters, digits, '.', '_', '-', got {raw!r}")
    return raw


def boolean(raw: str) -> bool:
    value = raw.lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")

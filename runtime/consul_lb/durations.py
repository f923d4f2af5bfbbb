"""Go-style durations ("250ms", "2s", "1m30s") and consul-template's ``min:max`` waits."""

from __future__ import annotations

import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|us|s|m|h)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class DurationError(ValueError):
    pass


def parse_duration(raw: str) -> float:
    """Seconds in a duration such as ``250ms``, ``2s`` or ``1m30s``; a bare number is seconds."""
    text = raw.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return float(text)
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise DurationError(f"expected a duration such as 250ms, 2s or 1m30s, got {raw!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_wait(raw: str) -> tuple[float, float]:
    """consul-template's wait: ``min:max``, or ``min`` alone meaning max = 4 x min."""
    low_raw, sep, high_raw = raw.partition(":")
    low = parse_duration(low_raw)
    high = parse_duration(high_raw) if sep else low * 4
    if high < low:
        raise DurationError(f"wait max must not be below min, got {raw!r}")
    return low, high


def format_duration(seconds: float) -> str:
    """Milliseconds as Consul's ``wait`` parameter expects them."""
    return f"{max(1, round(seconds * 1000))}ms"

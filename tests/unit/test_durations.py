"""Go-style durations and consul-template's ``wait min:max``."""

from __future__ import annotations

import pytest
from consul_lb.durations import DurationError, format_duration, parse_duration, parse_wait


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("2", 2.0),
        ("0.5", 0.5),
        ("0", 0.0),
        (" 3s ", 3.0),
        ("1h1m1s1ms", 3661.001),
    ],
)
def test_parse_duration(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw",
    ["", " ", "s", "ms", "-1s", "1d", "1 s", "1m 30s", "1sx", "x1s", "1,5s", "1e3", "fast", ".5s"],
)
def test_parse_duration_invalid(raw: str) -> None:
    with pytest.raises(DurationError, match="expected a duration"):
        parse_duration(raw)


@pytest.mark.parametrize(
    ("raw", "wait"),
    [
        ("100ms:1s", (0.1, 1.0)),
        ("2s:2s", (2.0, 2.0)),
        ("0:0", (0.0, 0.0)),
        ("500ms", (0.5, 2.0)),  # min alone: max is 4 x min, as in consul-template
        ("5s", (5.0, 20.0)),
    ],
)
def test_parse_wait(raw: str, wait: tuple[float, float]) -> None:
    assert parse_wait(raw) == pytest.approx(wait)


def test_wait_max_below_min_is_refused() -> None:
    with pytest.raises(DurationError, match="max must not be below min"):
        parse_wait("2s:1s")


@pytest.mark.parametrize("raw", ["", ":", "1s:", ":1s", "1s:2s:3s", "soon:1s", "1s:later"])
def test_parse_wait_invalid(raw: str) -> None:
    with pytest.raises(DurationError):
        parse_wait(raw)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(60.0, "60000ms"), (0.25, "250ms"), (1.0005, "1000ms"), (0.0, "1ms"), (0.0001, "1ms")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.25, 2.0, 61.5, 3600.0])
def test_format_then_parse_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)

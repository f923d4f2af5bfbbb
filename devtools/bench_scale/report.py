"""The bench's table, one column per size, as the README shows it."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

from devtools.bench_scale.catalog import expected_servers
from devtools.bench_scale.results import STAGES, Row
from devtools.loadclient import percentile


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.1f} ms" if value < 0.01 else f"{value * 1000:,.0f} ms"


def secs(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} s"


def mib(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} MiB"


def spread(values: list[float], timeouts: int) -> str:
    if not values:
        return "—" if not timeouts else f"{timeouts} timed out"
    text = (
        f"{percentile(values, 0.5) * 1000:,.0f} / {percentile(values, 0.99) * 1000:,.0f} / "
        f"{max(values) * 1000:,.0f} ms ({len(values)})"
    )
    return text + (f", {timeouts} timed out" if timeouts else "")


def table(rows: list[Row]) -> Iterator[str]:
    def line(label: str, target: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + f" | {target} |"

    yield (
        "| services x 5 instances | " + " | ".join(f"{r.services:,}" for r in rows) + " | target |"
    )
    yield "| --- | " + " | ".join("---:" for _ in rows) + " | --- |"
    yield line(
        "routed: services, servers (HAProxy's stats)",
        "all",
        [
            "—"
            if r.backends is None
            else f"{r.backends:,}/{r.services:,}, {r.servers:,}/{expected_servers(r.services):,}"
            + ("" if r.probe_ok else ", probe fails")
            for r in rows
        ],
    )
    yield line(
        "start to first applied configuration (start + reading Consul + apply)",
        "≤ 5 s",
        [
            secs(r.first_apply_s)
            + (
                ""
                if r.start_parts is None
                else " ({:.1f} + {:.1f} + {:.1f})".format(*r.start_parts)
            )
            for r in rows
        ],
    )
    yield line(
        "render, whole catalog: runtime (first apply) / in-process",
        "≤ 0.27 s",
        [f"{ms(r.render_runtime_s)} / {ms(r.render_s)}" for r in rows],
    )
    yield line(
        "render, one changed instance: runtime / in-process",
        "",
        [f"{ms(r.render_change_runtime_s)} / {ms(r.render_change_s)}" for r in rows],
    )
    yield line("`haproxy -c`", "", [ms(r.check_s) for r in rows])
    yield line(
        "haproxy.cfg",
        "",
        ["—" if r.config_kib is None else f"{r.config_kib:,.0f} KiB" for r in rows],
    )
    yield line(
        "runtime RSS: peak (settled after the first apply)",
        "≤ 96 MiB",
        [f"{mib(r.rss_peak_mib)} ({mib(r.rss_mib)})" for r in rows],
    )
    yield line("HAProxy RSS (master + worker)", "", [mib(r.haproxy_rss_mib) for r in rows])
    yield line(
        "connections to Consul: most open at once, counted (opened in all)",
        "≤ 64",
        [
            "—"
            if r.conns_max is None
            else f"{r.conns_max} ({r.conns_opened if r.conns_opened is not None else '—'})"
            for r in rows
        ],
    )
    yield line(
        "Consul requests for one changed instance",
        "≤ 3",
        ["—" if not r.requests else f"{statistics.median(r.requests):.0f}" for r in rows],
    )
    yield line(
        "change → routed, no reload: p50 / p99 / max (changes)",
        "p99 < 50 ms at 100, < 1 s at 5,000",
        [spread(r.delays["no reload"], r.timeouts["no reload"]) for r in rows],
    )
    yield line(
        "change → routed, reload: p50 / p99 / max (changes)",
        "",
        [spread(r.delays["reload"], r.timeouts["reload"]) for r in rows],
    )
    for key, label in STAGES:
        yield line(
            f"no reload, p50 ms after the PUT: {label}",
            "",
            [
                "—" if not r.stages[key] else f"{statistics.median(r.stages[key]) * 1000:,.1f}"
                for r in rows
            ],
        )

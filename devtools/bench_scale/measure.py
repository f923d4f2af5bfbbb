"""One size measured on the running stack: the load balancer's start, its figures at rest,
the Consul requests of one change, and the change -> routed rounds on both paths."""

from __future__ import annotations

import time
from contextlib import suppress

import docker.errors

from devtools import images
from devtools.bench_scale.catalog import DOMAIN, PROBE, expected_servers, service_name
from devtools.bench_scale.container_log import LogFollower, now_s
from devtools.bench_scale.http_probe import first_routed, get
from devtools.bench_scale.procfs import Sampler
from devtools.bench_scale.report import ms
from devtools.bench_scale.results import STAGES, Row
from devtools.bench_scale.stack import Bench
from devtools.loadclient import percentile

FIRST_APPLY_TIMEOUT = 600.0
ROUND_TIMEOUT = {"no reload": 30.0, "reload": 60.0}


def measure(bench: Bench, row: Row) -> None:
    n = row.services
    bench.say(f"  starting the load balancer ({bench.names.ref('haproxy')}) for {n:,} services")
    lb = bench.run(
        bench.names.ref("haproxy"),
        f"lb-{n}",
        environment={
            "HAPROXY_DOM": DOMAIN,
            "CONSUL_HTTP_ADDR": f"{bench.prefix}-consul:8500",
            "HAPROXY_RENDER_WAIT": bench.render_wait,
        },
        ports={"8080/tcp": ("127.0.0.1", None), "4444/tcp": ("127.0.0.1", None)},
    )
    bench.lb = lb
    sampler: Sampler | None = None
    try:
        lb.reload()
        started_at = now_s(lb.attrs["State"]["StartedAt"])
        if bench.direct:
            ip = images.container_ip(lb, bench.network.name)
            bench.http_addr, bench.stats_addr = (ip, 8080), (ip, 4444)
        else:
            bench.http_addr = ("127.0.0.1", images.host_port(lb, 8080))
            bench.stats_addr = ("127.0.0.1", images.host_port(lb, 4444))
        logs = LogFollower(lb.id, bench.say)
        logs.start()
        sampler = Sampler(lb, bench.consul_ip)
        sampler.start()
        if not sampler.host:
            row.notes.append("processes read with docker exec (no access to their /proc)")
        deadline = time.monotonic() + FIRST_APPLY_TIMEOUT
        first = logs.wait(lambda a: True, deadline)
        if first is None:
            row.notes.append(f"no configuration applied within {FIRST_APPLY_TIMEOUT:.0f} s")
            bench.say(f"  {n:,}: {row.notes[-1]}")
            return
        row.render_runtime_s = bench.render_seconds()
        row.first_apply_s = first.at - started_at
        if logs.watching is not None:
            began = first.at - first.took
            row.start_parts = (
                logs.watching - started_at,
                began - logs.watching,
                first.took,
            )
        bench.say(
            f"  first applied configuration {row.first_apply_s:.1f} s after the start: "
            f"{first.services:,} services, {first.servers:,} servers"
            + (
                ""
                if row.start_parts is None
                else " (runtime watching after {:.1f} s, Consul read in {:.1f} s, "
                "applied in {:.1f} s)".format(*row.start_parts)
            )
        )
        full = logs.wait(lambda a: a.services == n, deadline)
        if full is None:
            row.notes.append(f"not all {n:,} services applied within {FIRST_APPLY_TIMEOUT:.0f} s")
            return
        row.all_apply_s = full.at - started_at
        bench.quiet()
        bench.routed(row)
        procs = sampler.now()
        row.rss_mib = procs.runtime_rss_kib / 1024
        row.haproxy_rss_mib = procs.haproxy_rss_kib / 1024
        bench.say(
            f"  routed: {row.backends:,}/{n:,} services, {row.servers:,}/"
            f"{expected_servers(n):,} servers, probe {'answers' if row.probe_ok else 'FAILS'}; "
            f"runtime RSS {row.rss_mib:.1f} MiB, HAProxy {row.haproxy_rss_mib:.1f} MiB"
        )
        requests_per_change(bench, row)
        change_rounds(bench, row, "no reload")
        change_rounds(bench, row, "reload")
        procs = sampler.now()
        row.rss_peak_mib = procs.runtime_hwm_kib / 1024
        with suppress(RuntimeError, ValueError):
            row.conns_opened = int(bench.metrics()["consul_lb_consul_connections_opened"])
    finally:
        if sampler is not None:
            sampler.stop()
            row.conns_max = sampler.conns_max
        bench.lb = None
        with suppress(docker.errors.APIError):
            lb.remove(force=True)


def requests_per_change(bench: Bench, row: Row, times: int = 3) -> None:
    """Consul requests the runtime makes for one more instance of one service, once
    quiet (3 times: an idle blocking query that happens to end in the window adds one)."""
    victim = service_name(min(row.services - 1, 1))
    for k in range(times):
        bench.quiet()
        before, applied = bench.metrics(), bench.changes()
        sid = f"{victim}-extra-{k}"
        bench.register(victim, sid, "127.0.0.1", 9)
        if not bench.wait_changes(applied):
            row.notes.append("one registration was not applied within 120 s")
            return
        bench.quiet()
        after = bench.metrics()
        row.requests.append(
            int(
                after["consul_lb_consul_requests_total"] - before["consul_lb_consul_requests_total"]
            )
        )
        row.render_change_runtime_s = bench.render_seconds()
        applied = bench.changes()
        bench.deregister(sid)
        bench.wait_changes(applied)
    bench.say(
        f"  Consul requests for one changed instance: {row.requests}; render of that "
        f"change {ms(row.render_change_runtime_s)}"
    )


def change_rounds(bench: Bench, row: Row, path: str) -> None:
    """Time ``row.rounds`` changes on ``path``: "no reload" registers one more instance
    of the probe service (on B), "reload" a new service (on B)."""
    bench.say(f"  {row.rounds} changes on the {path} path:")
    last_said = time.monotonic()
    for k in range(row.rounds):
        bench.quiet(0.3, timeout=30)
        if path == "no reload":
            service, sid = PROBE, f"{PROBE}-b{k}"
        else:
            service = f"fresh-{k}"
            sid = f"{service}-b"
        host = f"{service}.{DOMAIN}"
        applied = bench.changes()
        t0 = time.time()
        bench.register(service, sid, bench.echo_ip["B"])
        routed = first_routed(bench.http_addr, host, "B", t0 + ROUND_TIMEOUT[path])
        ok = bench.wait_changes(applied)
        if routed is None:
            row.timeouts[path] += 1
        else:
            row.delays[path].append(routed - t0)
            if path == "no reload" and ok:
                stages(bench, row, t0, routed)
        applied = bench.changes()
        bench.deregister(sid)
        bench.wait_changes(applied)
        if path == "no reload" and not deleted(bench, host, sid):
            row.notes.append(f"{sid} still in HAProxy 15 s after its deregistration")
        if time.monotonic() - last_said > 15 or k + 1 == row.rounds:
            done = row.delays[path]
            bench.say(
                f"    {k + 1}/{row.rounds}: p50 {percentile(done, 0.5) * 1000:.0f} ms, "
                f"max {max(done, default=0) * 1000:.0f} ms, {row.timeouts[path]} timed out"
            )
            last_said = time.monotonic()


def deleted(bench: Bench, backend: str, server: str, timeout: float = 15.0) -> bool:
    """Until HAProxy no longer has ``server`` (drained, then deleted by the runtime's
    next look at its drains, every 0.5 s): the next round starts with none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get(bench.stats_addr, "bench", f"/;csv;norefresh?scope={backend}")
        if status == 200 and f"{backend},{server}," not in body.decode(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def stages(bench: Bench, row: Row, t0: float, routed: float) -> None:
    """The runtime's own times of the change (its state): when its watches got
    Consul's answers, and the loop's ``last_change``."""
    state = bench.state()
    change = state.get("last_change") or {}
    if change.get("path") != "runtime_api" or change.get("changed", 0) < t0:
        row.notes.append("a no-reload change was not applied by the runtime API")
        return
    watches = {w["name"]: w.get("last_success") or 0.0 for w in state.get("watches", ())}
    times = {
        **change,
        "answered": watches.get("services", 0.0),
        "read": watches.get("service fetches", 0.0),
        "routed": routed,
    }
    for key, _ in STAGES:
        if times.get(key):
            row.stages[key].append(times[key] - t0)

"""Zero-downtime reloads under load, caused by real Consul changes.

A load client container on the test network runs while a structural change is made in
Consul every few hundred milliseconds (a service appears, then disappears), each one a
reload. Counts only: failed requests, reloads, leftover processes, zombies, rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import Stack, finish_load, start_load, wait_until

ROOT = Path(__file__).resolve().parents[2]
ENABLE = "HAPROXY.ENABLE=true"
MIN_RELOADS = 200


LBS = ("haproxy", "haproxy-syndrop")


def reloads(stack: Stack) -> dict[str, int]:
    return {lb: int(stack.state(lb).get("reloads", 0)) for lb in LBS}


def churn(stack: Stack, changes: int) -> dict[str, int]:
    """Make ``changes`` structural changes, the next one once both load balancers applied
    the last; return the reloads each made."""
    before = reloads(stack)
    for i in range(changes):
        if i % 2 == 0:
            stack.register("churn-1", "churn", "web-3", [ENABLE])
        else:
            stack.deregister("churn-1")

        def applied(target: int = i + 1) -> bool:
            return all(n - before[lb] >= target for lb, n in reloads(stack).items())

        wait_until(
            applied,
            timeout=15,
            interval=0.01,
            what=f"change {i} applied by both",
        )
    return {lb: n - before[lb] for lb, n in reloads(stack).items()}


def processes(stack: Stack, service: str) -> list[tuple[str, str]]:
    """(state, command) of every process in the container."""
    out = stack.container(service).exec_run(["ps", "-eo", "stat=,comm="]).output.decode()
    return [tuple(line.split(None, 1)) for line in out.splitlines() if line.strip()]


def syn_drop_rules(stack: Stack) -> list[str]:
    out = (
        stack.container("haproxy-syndrop")
        .exec_run(["iptables", "-S", "INPUT"], user="root")
        .output.decode()
    )
    return [line for line in out.splitlines() if "consul-lb-syn-drop" in line]


def test_reloads_lose_no_request(stack: Stack) -> None:
    """seamless (the default): new connections and keep-alive; syn-drop: new
    connections. Both load balancers reload on the same Consul changes."""
    stack.register("steady-1", "steady", "web-1", [ENABLE])
    stack.register("steady-2", "steady", "web-2", [ENABLE])
    syn_http = f"http://127.0.0.1:{stack.port('netns', 8080)}"
    wait_until(lambda: stack.backend_of("steady.test.local"), what="steady routed")
    wait_until(
        lambda: requests.get(syn_http, headers={"Host": "steady.syn.local"}, timeout=5).ok,
        what="steady routed by the syn-drop load balancer",
    )
    clients = {
        "seamless close": start_load(stack, "haproxy", "steady.test.local", "close", 3),
        "seamless keepalive": start_load(stack, "haproxy", "steady.test.local", "keepalive", 3),
        "syn-drop close": start_load(stack, "netns", "steady.syn.local", "close", 3),
    }
    try:
        made = churn(stack, MIN_RELOADS + 5)
    finally:
        results = {name: finish_load(c) for name, c in clients.items()}
    print(f"reloads: {made}")
    for name, result in results.items():
        print(f"{name}: {result}")
    assert all(n >= MIN_RELOADS for n in made.values()), made
    for name, result in results.items():
        assert result["requests"] > 300, (name, result)
        assert result["failed"] == 0, (name, result)
    assert syn_drop_rules(stack) == []
    for lb, seamless in (("haproxy", True), ("haproxy-syndrop", False)):

        def drained(lb: str = lb, seamless: bool = seamless) -> bool:
            return old_processes(stack, lb, seamless) <= 1

        wait_until(
            drained,
            timeout=10,
            what=f"old processes of {lb} gone",
        )
        assert not [p for p in processes(stack, lb) if p[0].startswith("Z")], lb
    assert all(stack.state(lb)["failed_reloads"] == 0 for lb in LBS)


def old_processes(stack: Stack, service: str, seamless: bool) -> int:
    haproxies = sum(1 for _, comm in processes(stack, service) if comm == "haproxy")
    # master-worker: the master and the current worker; -sf: the current process.
    return haproxies - (2 if seamless else 1)


def test_operator_template_error_leaves_out_only_the_faulty_service(stack: Stack) -> None:
    syn_http = f"http://127.0.0.1:{stack.port('netns', 8080)}"
    # Both changes arrive in one render: one service breaks the operator's template.
    stack.register("fine-1", "fine", "web-1", [ENABLE])
    stack.register("broken-1", "broken", "web-2", [ENABLE, "HAPROXY.BACKEND.BALANCE=first"])
    wait_until(
        lambda: requests.get(syn_http, headers={"Host": "fine.syn.local"}, timeout=5).ok,
        what="the good change applied",
    )
    logs = wait_until(
        lambda: "skipping service 'broken'" in (lg := stack.logs("haproxy-syndrop")) and lg,
        what="the faulty service reported",
    )
    assert "haproxy -c rejects its configuration" in logs
    assert "(got 'serverr')" in logs  # HAProxy's own words
    skipped = {s["service"]: s["reason"] for s in stack.state("haproxy-syndrop")["skipped"]}
    assert "broken" in skipped and "fine" not in skipped
    assert (
        requests.get(syn_http, headers={"Host": "broken.syn.local"}, timeout=5).status_code == 503
    )
    assert syn_drop_rules(stack) == []


def test_rules_left_by_a_killed_runtime_are_removed_at_start(stack: Stack) -> None:
    lb = stack.container("haproxy-syndrop")
    # Freeze the runtime first: a reload in flight would remove every rule of ours, the
    # one planted below included.
    lb.exec_run(["pkill", "-STOP", "-f", "consul-lb haproxy"], user="root")
    # A rule as a run killed in the middle of a reload leaves it, then the kill itself.
    lb.exec_run(
        [
            "iptables",
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "8081",
            "--syn",
            "-m",
            "comment",
            "--comment",
            "consul-lb-syn-drop",
            "-j",
            "DROP",
        ],
        user="root",
    )
    assert len([r for r in syn_drop_rules(stack) if "--dport 8081" in r]) == 1
    lb.exec_run(["pkill", "-KILL", "-f", "consul-lb haproxy"], user="root")
    wait_until(lambda: (lb.reload() or lb.status) == "exited", what="container stopped")
    lb.start()
    wait_until(
        lambda: re.search(
            r"removed \d+ SYN-drop rule\(s\) left by an earlier run", stack.logs("haproxy-syndrop")
        ),
        what="start-up clean-up",
    )
    assert not [r for r in syn_drop_rules(stack) if "--dport 8081" in r]
    syn_health = f"http://127.0.0.1:{stack.port('netns', 4444)}/_haproxy_health_check"
    wait_until(lambda: requests.get(syn_health, timeout=2).ok, what="serving again")


@pytest.fixture(autouse=True)
def _no_leftover_load_clients(stack_session: Stack) -> Any:
    yield
    for c in stack_session.docker.containers.list(
        all=True, filters={"label": f"consul-lb-test={stack_session.project}"}
    ):
        c.remove(force=True)

"""Consul as real clusters present it, on an agent with its DEFAULT limits (200 HTTP
connections per client address): hundreds of services, rolling deploys that disagree
on tags, leftovers, instances without the tag, a held tcp port, the absolute Host form."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.conftest import DOMAIN, Stack, wait_until

ENABLE = "HAPROXY.ENABLE=true"
MANY = 250  # services, each with 2 instances: more than Consul's 200 connections


def catalog_register(stack: Stack, node: str, address: str, services: list[dict[str, Any]]) -> None:
    """Register services on a node of their own through the catalog API (as an external
    registrator does), one request per service."""
    session = requests.Session()
    for svc in services:
        body = {"Node": node, "Address": address, "Service": svc}
        session.put(f"{stack.consul}/v1/catalog/register", json=body, timeout=10).raise_for_status()


def catalog_deregister(stack: Stack, node: str) -> None:
    body = {"Node": node}
    requests.put(f"{stack.consul}/v1/catalog/deregister", json=body, timeout=30).raise_for_status()


@pytest.fixture
def many(stack: Stack) -> Iterator[list[str]]:
    ip = stack.ip("web-1")
    names = [f"bulk{n:03d}" for n in range(MANY)]
    services = [
        {"ID": f"{name}-{i}", "Service": name, "Address": ip, "Port": 8000, "Tags": [ENABLE]}
        for name in names
        for i in (1, 2)
    ]
    catalog_register(stack, "bulk-node", ip, services)
    yield names
    catalog_deregister(stack, "bulk-node")


def consul_connections(stack: Stack) -> int:
    """Established TCP connections from the load balancer to Consul's port 8500, read
    from the container's /proc/net/tcp (counted, not configured)."""
    out = stack.container("haproxy").exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).output
    count = 0
    for line in out.decode().splitlines()[1:]:
        fields = line.split()
        if (
            len(fields) > 3 and fields[2].endswith(":2134") and fields[3] == "01"
        ):  # 8500, ESTABLISHED
            count += 1
    return count


def test_hundreds_of_services_on_a_default_agent(stack: Stack, many: list[str]) -> None:
    # All routed (the fault: none, with the log full of "Connection reset by peer").
    wait_until(
        lambda: len(stack.state().get("services", [])) >= MANY,
        timeout=120,
        what=f"{MANY} services published",
    )
    for name in (many[0], many[MANY // 2], many[-1]):
        assert stack.backend_of(f"{name}.{DOMAIN}") == "web-1"
    assert consul_connections(stack) <= 64
    # And later changes still apply.
    stack.register("late-1", "late", "web-2", [ENABLE])
    assert (
        wait_until(lambda: stack.backend_of(f"late.{DOMAIN}"), what="a later registration")
        == "web-2"
    )
    assert "reset by peer" not in stack.logs()


def requests_fail(stack: Stack, host: str, stop: threading.Event, failures: list[str]) -> None:
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            code = stack.get(host).status_code
        except requests.RequestException as exc:
            failures.append(type(exc).__name__)
        else:
            if code != 200:
                failures.append(str(code))
        stop.wait(0.02)


def test_a_rolling_deploy_with_another_tag_value_keeps_the_service_up(stack: Stack) -> None:
    host = f"rolling.{DOMAIN}"
    old = [ENABLE, "HAPROXY.BACKEND.BALANCE=roundrobin"]
    new = [ENABLE, "HAPROXY.BACKEND.BALANCE=leastconn"]
    stack.register("rolling-1", "rolling", "web-1", old)
    stack.register("rolling-2", "rolling", "web-2", old)
    wait_until(lambda: {stack.backend_of(host) for _ in range(6)} == {"web-1", "web-2"})
    stop, failures = threading.Event(), list[str]()
    watcher = threading.Thread(target=requests_fail, args=(stack, host, stop, failures))
    watcher.start()
    try:
        stack.register("rolling-3", "rolling", "web-3", new)  # the first new instance
        wait_until(
            lambda: "balance leastconn" in stack.config_of(host), what="the new balance in use"
        )
        for old_id in ("rolling-1", "rolling-2"):  # the old ones go, one by one
            stack.deregister(old_id)
            time.sleep(1)
        wait_until(lambda: {stack.backend_of(host) for _ in range(4)} == {"web-3"})
    finally:
        stop.set()
        watcher.join(10)
    assert failures == []  # never unpublished for the disagreement
    assert "disagree on HAPROXY.BACKEND.BALANCE" in stack.logs()


def test_a_critical_leftover_with_another_value_does_not_touch_a_healthy_service(
    stack: Stack,
) -> None:
    host = f"leftover.{DOMAIN}"
    stack.register("leftover-1", "leftover", "web-1", [ENABLE])
    wait_until(lambda: stack.backend_of(host) == "web-1")
    tcp = [ENABLE, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9000"]
    stack.register("leftover-2", "leftover", "web-2", tcp, check={"TTL": "60s"})
    stack.ttl("leftover-2", "fail")
    time.sleep(2)
    assert {stack.backend_of(host) for _ in range(6)} == {"web-1"}
    assert "mode http" in stack.config_of(host)


def test_an_instance_without_the_enable_tag_gets_no_traffic(stack: Stack) -> None:
    host = f"partial.{DOMAIN}"
    stack.register("partial-1", "partial", "web-1", [ENABLE])
    stack.register("partial-2", "partial", "web-2", ["something-else"])
    wait_until(lambda: stack.backend_of(host) == "web-1")
    time.sleep(1)
    assert {stack.backend_of(host) for _ in range(10)} == {"web-1"}


def test_a_tcp_port_stays_with_the_service_that_holds_it(stack: Stack) -> None:
    tcp = [ENABLE, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9000"]
    stack.register("zholder-1", "zholder", "web-1", tcp)

    def tcp_answer() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", stack.tcp_port), timeout=2) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return b"".join(iter(lambda: sock.recv(4096), b""))
        except OSError:
            return b""

    wait_until(lambda: b"web-1" in tcp_answer(), what="the holder on 9000")
    # A later service asking for the same port, whose name sorts first.
    stack.register("anewcomer-1", "anewcomer", "web-2", tcp)
    reason = wait_until(
        lambda: next(
            (s["reason"] for s in stack.state().get("skipped", []) if s["service"] == "anewcomer"),
            None,
        ),
        what="the newcomer skipped",
    )
    assert reason == "HAPROXY.FRONTEND.PORT=9000 is held by service 'zholder'"
    assert b"web-1" in tcp_answer()


def test_the_absolute_host_form_routes(stack: Stack) -> None:
    stack.register("dotted-1", "dotted", "web-3", [ENABLE])
    wait_until(lambda: stack.backend_of(f"dotted.{DOMAIN}") == "web-3")
    assert stack.backend_of(f"dotted.{DOMAIN}.") == "web-3"
    assert stack.backend_of(f"dotted.{DOMAIN}.:8080") == "web-3"
    assert stack.backend_of(f"dotted.{DOMAIN}..") is None

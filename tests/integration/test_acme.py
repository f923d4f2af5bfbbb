"""Certificates from ACME for a fleet (issue 13), against a real ACME server: Pebble on
the test network, two load balancers on one Consul (the stack: acme_fleet.py). One order
for the fleet, both serving it; a renewal under https load without a reload and without a
failed request; a refusing or unreachable server retried with the fleet's backoff and
logged once; the lock holder killed mid-order, the other one finishing.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import requests

from tests.integration.acme_fleet import (
    LBS,
    VALIDITY,
    Fleet,
    everywhere,
    fleet_stack,
    ready,
    says,
)
from tests.integration.conftest import wait_until
from tests.integration.https_load import HttpsLoad, haproxy_worker_pid

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with fleet_stack() as stack:
        yield stack


def test_one_order_and_both_load_balancers_serve_it(fleet: Fleet) -> None:
    started = time.monotonic()
    fleet.register("www")
    fingerprint = wait_until(lambda: everywhere(fleet, "www.acme.test"), timeout=60)
    took = time.monotonic() - started
    orders = [lb.orders() for lb in fleet.lbs.values()]
    print(
        f"first certificate served by both {took:.1f}s after the registration: orders per "
        f"load balancer {orders}, Pebble saw {fleet.pebble_orders()}"
    )
    assert sum(o.get("issued", 0) for o in orders) == 1
    assert sum(o.get("failed", 0) for o in orders) == 0
    assert fleet.pebble_orders() == 1
    # Each load balancer's state says what is served and who ordered it.
    for lb in fleet.lbs.values():
        wait_until(partial(says, lb, "www.acme.test.acme", fingerprint), what=lb.name)
    states = [lb.state()["acme"]["certificates"][0] for lb in fleet.lbs.values()]
    assert len({s["last_order"]["by"] for s in states}) == 1
    assert states[0]["last_order"]["by"] in LBS
    for lb in fleet.lbs.values():  # the service itself over https, on both
        found = lb.https("www.acme.test")
        assert found is not None and found[0] == fingerprint
        assert found[1].startswith(b"HTTP/1.1 200") and b'"backend": "web-acme"' in found[1]


def test_a_renewal_replaces_it_on_both_without_reload_and_without_a_failed_request(
    fleet: Fleet,
) -> None:
    def settled() -> tuple[str, dict[str, Any]] | None:
        """The certificate both serve, when its renewal is 10 s away or more (so that the
        load below starts on it), and once the reload that bound https is counted on both
        (a seamless reload's worker answers before its apply ends)."""
        if not all(lb.state()["tls"]["https_bound"] for lb in fleet.lbs.values()):
            return None
        found = everywhere(fleet, "www.acme.test")
        (cert,) = fleet.lbs["lb-a"].state()["acme"]["certificates"]
        if found is None or cert["sha256"] != found or cert["next_renewal"] < time.time() + 10:
            return None
        return found, cert

    first, cert = wait_until(settled, timeout=VALIDITY, what="a certificate not due yet")
    # Pebble's certificates live VALIDITY seconds: renewed halfway, by whichever one.
    assert cert["next_renewal"] == pytest.approx(cert["not_after"] - VALIDITY / 2, abs=2)
    workers = {name: haproxy_worker_pid(lb.container) for name, lb in fleet.lbs.items()}
    reloads = {name: lb.state()["reloads"] for name, lb in fleet.lbs.items()}
    loads = [HttpsLoad(lb, "www.acme.test") for lb in fleet.lbs.values()]
    with contextlib.ExitStack() as running:
        for load in loads:
            running.enter_context(load)

        def renewed() -> str | None:
            found = everywhere(fleet, "www.acme.test")
            return found if found not in (None, first) else None

        second = wait_until(renewed, timeout=VALIDITY + 30, what="the renewed certificate")
        both = time.time()
        wait_until(lambda: all(load.saw(second) for load in loads), what="both to serve it")
    handshakes = [len(load.seen) for load in loads]
    print(
        f"renewal: served by both {both - cert['next_renewal']:.1f}s after the renewal time, "
        f"{cert['not_after'] - both:.1f}s before expiry; "
        f"{handshakes} https requests (new connection each) on lb-a, lb-b; "
        f"failed {[len(load.failures) for load in loads]}; worker pids {workers} before, "
        f"{ {name: haproxy_worker_pid(lb.container) for name, lb in fleet.lbs.items()} } after; "
        f"Pebble orders {fleet.pebble_orders()}"
    )
    assert all(n > 0 for n in handshakes)
    assert all(load.saw(first) and load.saw(second) for load in loads)  # the load spanned it
    assert [load.failures for load in loads] == [[], []]
    assert {name: haproxy_worker_pid(lb.container) for name, lb in fleet.lbs.items()} == workers
    assert {name: lb.state()["reloads"] for name, lb in fleet.lbs.items()} == reloads

    # Every order Pebble saw was one a load balancer counted as issued: none wasted (an
    # order Pebble has just received is counted once it ends).
    def issued() -> bool:
        counted = sum(lb.orders().get("issued", 0) for lb in fleet.lbs.values())
        return counted == fleet.pebble_orders()

    wait_until(issued, timeout=30, what="the load balancers' count of Pebble's orders")
    assert fleet.pebble_orders() >= 2
    assert sum(lb.orders().get("failed", 0) for lb in fleet.lbs.values()) == 0


def statuses(fleet: Fleet, name: str, seconds: float) -> list[dict[str, Any]]:
    """Each distinct status the fleet wrote for certificate ``name`` within ``seconds``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw, _ = fleet.kv(f"consul-lb/acme/status/{name}")
        status = json.loads(raw) if raw else None
        if status and (not seen or status != seen[-1]):
            seen.append(status)
        time.sleep(0.1)
    return seen


def test_a_refusing_or_unreachable_acme_server_is_logged_once_and_retried_with_backoff(
    fleet: Fleet,
) -> None:
    fleet.register("refused", "HAPROXY.FRONTEND.HOSTS=www.blocked.test")  # Pebble refuses

    def refusal() -> dict[str, Any] | None:
        raw, _ = fleet.kv("consul-lb/acme/status/refused.acme.test.acme")
        status = json.loads(raw) if raw else None
        return status if status and status["result"] == "failed" else None

    refused = wait_until(refusal, timeout=30, what="Pebble's refusal")
    fleet.network.disconnect(fleet.pebble)  # and then it cannot be reached at all
    try:
        fleet.register("down")
        down = statuses(fleet, "down.acme.test.acme", 20)
        # The services themselves keep working over http, on both load balancers.
        for lb in fleet.lbs.values():
            assert [lb.http(f"{s}.acme.test") for s in ("down", "refused")] == [200, 200]
    finally:
        fleet.network.connect(fleet.pebble, aliases=["pebble"])
    print(f"unreachable: {[(s['failures'], s['by']) for s in down]}; refused: {refused}")
    assert "rejectedIdentifier" in refused["error"] and refused["result"] == "failed"
    assert all("unreachable" in s["error"] for s in down)
    # Retried with backoff (HAPROXY_ACME_RETRY=2s:8s) by the fleet: failures counted up
    # one at a time, each next attempt doubling the wait, and no load balancer tried
    # again before the time the last failure set.
    assert [s["failures"] for s in down] == list(range(1, len(down) + 1))
    assert len(down) >= 3
    for before, after in itertools.pairwise(down):
        assert after["time"] >= before["next_attempt"]
    waits = [s["next_attempt"] - s["time"] for s in down]
    for n, wait in enumerate(waits, start=1):
        assert 0.9 * min(8, 2 * 2 ** (n - 1)) <= wait <= min(8, 2 * 2 ** (n - 1))
    # Logged once per load balancer, however many times it failed.
    for lb in fleet.lbs.values():
        lines = [ln for ln in lb.logs().splitlines() if "'down.acme.test.acme'" in ln]
        assert len([ln for ln in lines if "order failed" in ln]) <= 1, lines
    logged = sum(
        "'down.acme.test.acme' (down.acme.test): order failed (unreachable)" in lb.logs()
        for lb in fleet.lbs.values()
    )
    assert logged >= 1
    # Pebble back: the certificate comes with the next attempt.
    wait_until(lambda: everywhere(fleet, "down.acme.test"), timeout=30, what="down's certificate")


def test_killing_the_lock_holder_mid_order_still_ends_with_a_certificate(fleet: Fleet) -> None:
    fleet.register("api")
    lock = "consul-lb/acme/locks/api.acme.test.acme"

    def mid_order() -> str | None:
        """The holder of api's lock while a challenge is published and no other order
        that publishes challenges runs (refused's stops at Pebble's refusal), so that
        the challenge is api's."""
        locks = requests.get(f"{fleet.consul_url}/v1/kv/consul-lb/acme/locks/?recurse", timeout=5)
        held = {e["Key"]: e for e in locks.json() if e.get("Session")} if locks.ok else {}
        if lock not in held or set(held) - {lock, "consul-lb/acme/locks/refused.acme.test.acme"}:
            return None
        r = requests.get(f"{fleet.consul_url}/v1/kv/consul-lb/acme/challenges/?keys", timeout=5)
        return base64.b64decode(held[lock]["Value"]).decode() if r.ok and r.json() else None

    holder = wait_until(mid_order, timeout=30, interval=0.02, what="api's order under way")
    fleet.lbs[holder].container.kill()
    killed = time.monotonic()
    orders = fleet.pebble_orders()  # the killed one's order included
    survivor = next(lb for name, lb in fleet.lbs.items() if name != holder)
    try:
        # The killed one's session ends with its TTL (15 s, Consul allows up to twice
        # that), its lock then waits Consul's lock delay (5 s): the survivor takes over.
        found = wait_until(lambda: survivor.served("api.acme.test"), timeout=90, what="api")
        (status,) = [
            c["last_order"]
            for c in survivor.state()["acme"]["certificates"]
            if c["name"] == "api.acme.test.acme"
        ]
        print(
            f"killed {holder} mid-order; {survivor.name} finished "
            f"{time.monotonic() - killed:.1f}s later: {status}; Pebble orders {orders} at the "
            f"kill, {fleet.pebble_orders()} after"
        )
        assert status["by"] == survivor.name and status["result"] == "issued"
    finally:
        fleet.lbs[holder].container.start()
    restarted = fleet.lbs[holder]
    wait_until(partial(ready, restarted), timeout=60, what="the restart")
    assert wait_until(lambda: restarted.served("api.acme.test"), timeout=30) == found

"""Certificates from ACME for a fleet (issue 13), against a real ACME server: Pebble, from
Debian trixie's package, on the test network. Two load balancers on one Consul; every
service host resolves to both (Docker network aliases), so Pebble's HTTP-01 validation
reaches either.

Pebble is told to issue certificates valid for ``VALIDITY`` seconds: each is renewed
halfway through its life (the renewal rule for certificates shorter-lived than twice
``HAPROXY_ACME_RENEW_BEFORE``), so a renewal happens during the test by itself. It
validates at once (``PEBBLE_VA_NOSLEEP``) and rejects no valid nonce; challenges are
really validated (``PEBBLE_VA_ALWAYS_VALID`` is not used). Pebble refuses names under
``blocked.test`` (its ``domainBlocklist``).

This stack kills and restarts its own containers, so it does not use the shared
pytest-docker stack: it builds its own network and containers, and removes them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from devtools import images, pebble
from tests.integration.conftest import (
    HttpsLoad,
    haproxy_worker_pid,
    image_names,
    require_images,
    wait_until,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "acme.test"
VALIDITY = 90  # seconds: renewed 45 s after each issue
ON = "HAPROXY.ENABLE=true"
ACME = "HAPROXY.FRONTEND.ACME=true"
HOSTS = [f"{name}.{DOMAIN}" for name in ("www", "api", "down", "refused")]
LBS = ("lb-a", "lb-b")
LABEL = "consul-lb-test"  # = the network's name, on each container of the stack


@dataclass
class LoadBalancer:
    name: str
    container: Any
    ca_file: Path  # Pebble's root: what clients of the issued certificates trust
    port: int = 0  # https, on 127.0.0.1

    def refresh(self) -> None:
        self.port = images.host_port(self.container, 8443)

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{images.host_port(self.container, port)}{path}"

    def state(self) -> dict[str, Any]:
        found: dict[str, Any] = requests.get(self.url(4444, "/_consul_lb/state"), timeout=5).json()
        return found

    def orders(self) -> dict[str, float]:
        text = requests.get(self.url(4444, "/metrics/runtime"), timeout=5).text
        prefix = 'consul_lb_acme_orders_total{result="'
        return {
            ln[len(prefix) :].split('"')[0]: float(ln.split()[-1])
            for ln in text.splitlines()
            if ln.startswith(prefix)
        }

    def http(self, host: str) -> int:
        return requests.get(self.url(8080, "/"), headers={"Host": host}, timeout=5).status_code

    def served(self, host: str) -> str | None:
        """SHA-256 of the certificate served for ``host``, if it verifies against Pebble's
        root and names ``host``; None otherwise."""
        found = self.https(host, request=False)
        return found[0] if found else None

    def https(self, host: str, request: bool = True) -> tuple[str, bytes] | None:
        """(SHA-256 of the certificate, the answer to ``GET /``) over https for ``host``;
        None when the handshake fails (no certificate yet, or not Pebble's)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=host) as conn,
            ):
                der = conn.getpeercert(binary_form=True) or b""
                reply = b""
                if request:
                    conn.sendall(
                        f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                    )
                    reply = conn.makefile("rb").read()
                return hashlib.sha256(der).hexdigest(), reply
        except (OSError, ssl.SSLError):
            return None

    def logs(self) -> str:
        return str(self.container.logs().decode(errors="replace"))


@dataclass
class Fleet:
    docker: Any
    network: Any
    consul: Any
    pebble: Any
    backend_ip: str
    lbs: dict[str, LoadBalancer] = field(default_factory=dict)

    @property
    def consul_url(self) -> str:
        return f"http://127.0.0.1:{images.host_port(self.consul, 8500)}"

    def register(self, name: str, *tags: str) -> None:
        body = {
            "ID": f"{name}-1",
            "Name": name,
            "Address": self.backend_ip,
            "Port": 8000,
            "Tags": [ON, ACME, *tags],
        }
        url = f"{self.consul_url}/v1/agent/service/register"
        requests.put(url, json=body, timeout=5).raise_for_status()

    def kv(self, key: str) -> tuple[bytes | None, str | None]:
        """A key's value and the session holding it."""
        r = requests.get(f"{self.consul_url}/v1/kv/{key}", timeout=5)
        if r.status_code == 404:
            return None, None
        entry = r.json()[0]
        return base64.b64decode(entry.get("Value") or ""), entry.get("Session")

    def pebble_orders(self) -> int:
        """New orders Pebble received (its own log: one line per request)."""
        return str(self.pebble.logs().decode(errors="replace")).count("POST /order-plz")


def run_load_balancer(client: Any, network: str, name: str, pebble_dir: Path, ca: Path) -> Any:
    aliases = client.api.create_endpoint_config(aliases=HOSTS)
    return client.containers.run(
        image_names().ref("haproxy"),
        name=f"{network}-{name}",
        hostname=name,  # the name it holds locks under
        environment={
            "HAPROXY_DOM": DOMAIN,
            "CONSUL_HTTP_ADDR": "consul:8500",
            "HAPROXY_RENDER_WAIT": "50ms:500ms",
            "HAPROXY_DRAIN_SECONDS": "1",
            "HAPROXY_TLS_CERT_KV": "tls/certs",
            "HAPROXY_ACME_DIRECTORY": "https://pebble:14000/dir",
            "HAPROXY_ACME_CA_FILE": "/etc/pebble/ca.pem",
            "HAPROXY_ACME_EMAIL": "ops@example.com",
            "HAPROXY_ACME_RETRY": "2s:8s",
        },
        volumes={str(pebble_dir): {"bind": "/etc/pebble", "mode": "ro"}},
        network=network,
        networking_config={network: aliases},
        ports={f"{p}/tcp": ("127.0.0.1", None) for p in (8080, 8443, 4444)},
        detach=True,
        labels={LABEL: network},
    )


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    client = docker.from_env()
    names = image_names()
    require_images(client, names.ref("haproxy"), names.ref("consul-template"))
    try:
        consul_image = images.present_consul_image(client)
        pebble_image = images.ensure_pebble_image(client, images.ensure_debian_base(client))
    except images.ImageError as exc:
        pytest.fail(str(exc))
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    network = client.networks.create(f"consul-lb-acme-{suffix}", driver="bridge")
    created: list[Any] = []
    pebble_dir = Path(tempfile.mkdtemp(prefix="consul-lb-pebble-"))
    try:
        pebble.write_files(pebble_dir, "pebble", http_port=8080, validity=VALIDITY)
        conf = json.loads((pebble_dir / "config.json").read_text())
        conf["pebble"]["domainBlocklist"] = ["blocked.test"]
        (pebble_dir / "config.json").write_text(json.dumps(conf))
        common = {"network": network.name, "detach": True, "labels": {LABEL: network.name}}
        consul = client.containers.run(
            consul_image,
            command=images.consul_dev_command(),
            name=f"{network.name}-consul",
            networking_config={network.name: client.api.create_endpoint_config(aliases=["consul"])},
            ports={"8500/tcp": ("127.0.0.1", None)},
            **common,
        )
        created.append(consul)
        server = client.containers.run(
            pebble_image,
            name=f"{network.name}-pebble",
            environment=pebble.ENV,
            volumes={str(pebble_dir): {"bind": "/etc/pebble", "mode": "ro"}},
            networking_config={network.name: client.api.create_endpoint_config(aliases=["pebble"])},
            ports={"15000/tcp": ("127.0.0.1", None)},
            **common,
        )
        created.append(server)
        backend = client.containers.run(
            names.ref("consul-template"),
            entrypoint=["python3", "/srv/echo.py"],
            command=[],
            environment={"ECHO_NAME": "web-acme"},
            volumes={str(ROOT / "deploy/demo/echo.py"): {"bind": "/srv/echo.py", "mode": "ro"}},
            name=f"{network.name}-web",
            **common,
        )
        created.append(backend)
        fleet = Fleet(client, network, consul, server, images.container_ip(backend, network.name))
        wait_until(
            lambda: requests.get(f"{fleet.consul_url}/v1/status/leader", timeout=2).json(),
            timeout=60,
            what="Consul's leader",
        )
        root = pebble_dir / "root.pem"
        root.write_bytes(wait_until(lambda: pebble_root(server, pebble_dir), timeout=30))
        for name in LBS:
            container = run_load_balancer(client, network.name, name, pebble_dir, root)
            created.append(container)
            fleet.lbs[name] = LoadBalancer(name, container, root)
        for lb in fleet.lbs.values():
            wait_until(partial(ready, lb), timeout=60, what=lb.name)
        yield fleet
    finally:
        # Every container of this stack, also one whose start failed (not in ``created``).
        labelled = client.containers.list(all=True, filters={"label": f"{LABEL}={network.name}"})
        for container in [*reversed(created), *labelled]:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        network.remove()
        shutil.rmtree(pebble_dir, ignore_errors=True)


def ready(lb: LoadBalancer) -> bool:
    """The load balancer read Consul once; its published port is known."""
    if lb.state().get("waiting") is not None:
        return False
    lb.refresh()
    return True


def pebble_root(server: Any, pebble_dir: Path) -> bytes | None:
    """The root Pebble issues under (a new one at each start), from its management port."""
    url = f"https://127.0.0.1:{images.host_port(server, 15000)}/roots/0"
    try:
        r = requests.get(url, verify=str(pebble_dir / "ca.pem"), timeout=5)
    except requests.RequestException:
        return None
    return r.content if r.ok else None


def says(lb: LoadBalancer, name: str, fingerprint: str) -> bool:
    """The load balancer's state shows ``fingerprint`` for certificate ``name``."""
    found = [c for c in lb.state()["acme"]["certificates"] if c["name"] == name]
    return bool(found) and found[0]["sha256"] == fingerprint


def everywhere(fleet: Fleet, host: str) -> str | None:
    """The fingerprint both load balancers serve for ``host``, when they serve the same."""
    found = {lb.served(host) for lb in fleet.lbs.values()}
    return found.pop() if len(found) == 1 and None not in found else None


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
    first = wait_until(lambda: everywhere(fleet, "www.acme.test"), timeout=60)
    (cert,) = fleet.lbs["lb-a"].state()["acme"]["certificates"]
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
        f"failed {[len(load.failures) for load in loads]}; worker pids {workers}; "
        f"Pebble orders {fleet.pebble_orders()}"
    )
    assert all(n > 0 for n in handshakes)
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
        """The holder of api's lock while one of its challenges is published (and no
        other certificate's order runs, so that the challenge is api's)."""
        holder, session = fleet.kv(lock)
        if not session:
            return None
        _, www = fleet.kv("consul-lb/acme/locks/www.acme.test.acme")
        r = requests.get(f"{fleet.consul_url}/v1/kv/consul-lb/acme/challenges/?keys", timeout=5)
        return (holder or b"").decode() if r.ok and r.json() and not www else None

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

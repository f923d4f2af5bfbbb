"""What the bench runs: Consul, the sample backends and one load balancer at a time, on a
network of their own; and what it asks them."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import docker
import docker.errors
import requests

from devtools import images, local_images
from devtools.bench_scale.catalog import DOMAIN, ENABLE, INSTANCES, PROBE, port_of, service_name
from devtools.bench_scale.http_probe import Addr, backend_of, get, parse_metrics
from devtools.bench_scale.results import Row

TXN_OPS = 64  # Consul 1.8's limit of operations per /v1/txn
# The sample backends: HAProxy from the image answering by itself, in microseconds and
# with little CPU, so that neither the backend nor its load blurs the timing. They close
# each connection: the load balancer keeps no idle connection to a deregistered
# instance, which would hold its drain (and the runtime's sweeps) for HAProxy's
# pool-purge-delay (5 s) after each round.
ECHO_CONFIG = """global
    maxconn 2000
defaults
    mode http
    timeout client 10s
    timeout connect 5s
    timeout server 10s
frontend echo
    bind :8000
    option httpclose
    http-request return status 200 content-type application/json string '{"backend":"%s"}'
"""
APPLY_TIMEOUT = 120.0


class Bench:
    """Consul, the sample backends and one load balancer at a time, on a network of
    their own; ``close`` removes them all (by the bench's unique name prefix)."""

    def __init__(
        self, names: images.ImageNames, render_wait: str, say: Callable[[str], None]
    ) -> None:
        self.names = names
        self.render_wait = render_wait
        self.say = say
        self.client = docker.from_env(timeout=300)
        self.prefix = f"consul-lb-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.network: Any = None
        self.http = requests.Session()
        self.consul_addr: Addr = ("127.0.0.1", 0)
        self.consul_ip = ""
        # Whether this host reaches the containers' own addresses (a local engine): then
        # the bench talks to them directly, without Docker's port-publishing proxy.
        self.direct = False
        self.echo_ip: dict[str, str] = {}
        self.filled = 0
        # Set while a load balancer runs.
        self.lb: Any = None
        self.http_addr: Addr = ("127.0.0.1", 0)
        self.stats_addr: Addr = ("127.0.0.1", 0)

    # -- containers -------------------------------------------------------------------
    def run(self, image: str, name: str, **kwargs: Any) -> Any:
        return self.client.containers.run(
            image,
            name=f"{self.prefix}-{name}",
            network=self.network.name,
            labels={"consul-lb.purpose": "bench-scale"},
            detach=True,
            **kwargs,
        )

    def close(self) -> None:
        self.http.close()
        with suppress(docker.errors.APIError):
            for c in self.client.containers.list(all=True, filters={"name": self.prefix}):
                if c.name.startswith(self.prefix):
                    with suppress(docker.errors.NotFound):
                        c.remove(force=True)
        if self.network is not None:
            with suppress(docker.errors.APIError):
                self.network.remove()
        self.client.close()

    def start(self) -> None:
        self.network = self.client.networks.create(self.prefix, driver="bridge")
        consul = self.run(
            local_images.present_consul_image(self.client),
            "consul",
            command=local_images.consul_dev_command(),
            ports={"8500/tcp": ("127.0.0.1", None)},
        )
        self.consul_ip = images.container_ip(consul, self.network.name)
        self.consul_addr = ("127.0.0.1", images.host_port(consul, 8500))
        for name in ("A", "B"):
            echo = self.run(
                self.names.ref("haproxy"),
                f"echo-{name.lower()}",
                entrypoint=[
                    "sh",
                    "-c",
                    'printf "%s" "$0" > /tmp/echo.cfg && exec haproxy -db -f /tmp/echo.cfg',
                ],
                command=[ECHO_CONFIG % name],
            )
            self.echo_ip[name] = images.container_ip(echo, self.network.name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with suppress(requests.RequestException, ValueError, RuntimeError):
                if self.consul("GET", "/v1/status/leader").json():
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("Consul did not elect itself leader within 60 s")
        with suppress(OSError), socket.create_connection((self.consul_ip, 8500), timeout=1):
            self.direct = True
            self.consul_addr = (self.consul_ip, 8500)
        self.say(
            "  this host reaches the containers' addresses: no port-publishing proxy in the way"
            if self.direct
            else "  requests go through the ports published on 127.0.0.1"
        )

    # -- Consul -----------------------------------------------------------------------
    def consul(self, method: str, path: str, body: Any = None) -> requests.Response:
        r = self.http.request(
            method,
            f"http://{self.consul_addr[0]}:{self.consul_addr[1]}{path}",
            json=body,
            timeout=30,
        )
        if r.status_code != 200:
            raise RuntimeError(f"Consul {method} {path}: HTTP {r.status_code}: {r.text[:200]}")
        return r

    def txn(self, ops: list[dict[str, Any]]) -> None:
        host, port = self.consul_addr
        r = requests.put(f"http://{host}:{port}/v1/txn", json=ops, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"Consul /v1/txn: HTTP {r.status_code}: {r.text[:200]}")

    def instance_op(self, i: int, j: int) -> dict[str, Any]:
        name = service_name(i)
        return {
            "Service": {
                "Verb": "set",
                "Node": f"node-{j}",
                "Service": {
                    "ID": f"{name}-{j}",
                    "Service": name,
                    "Address": "127.0.0.1",
                    "Port": port_of(i, j),
                    "Tags": [ENABLE],
                },
            }
        }

    def fill(self, services: int) -> None:
        """Register services up to ``services`` (5 instances each; the probe: one on A),
        64 operations per transaction."""
        started = time.monotonic()
        ops: list[dict[str, Any]] = []
        if self.filled == 0:
            self.txn(
                [
                    {"Node": {"Verb": "set", "Node": {"Node": f"node-{j}", "Address": "127.0.0.1"}}}
                    for j in range(INSTANCES)
                ]
            )
            self.register(PROBE, f"{PROBE}-a", self.echo_ip["A"])
            self.filled = 1
        ops = [
            self.instance_op(i, j) for i in range(self.filled, services) for j in range(INSTANCES)
        ]
        batches = [ops[k : k + TXN_OPS] for k in range(0, len(ops), TXN_OPS)]
        done = 0
        last_said = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            for _ in pool.map(self.txn, batches):
                done += 1
                if time.monotonic() - last_said > 10:
                    self.say(f"  Consul: {done}/{len(batches)} transactions")
                    last_said = time.monotonic()
        self.filled = max(self.filled, services)
        self.say(
            f"  Consul: {services:,} services registered ({len(batches)} transactions of "
            f"at most {TXN_OPS}, {time.monotonic() - started:.1f} s)"
        )

    def register(self, service: str, service_id: str, address: str, port: int = 8000) -> None:
        self.consul(
            "PUT",
            "/v1/catalog/register",
            {
                "Node": "node-0",
                "Address": "127.0.0.1",
                "SkipNodeUpdate": True,
                "Service": {
                    "ID": service_id,
                    "Service": service,
                    "Address": address,
                    "Port": port,
                    "Tags": [ENABLE],
                },
            },
        )

    def deregister(self, service_id: str) -> None:
        self.consul("PUT", "/v1/catalog/deregister", {"Node": "node-0", "ServiceID": service_id})

    # -- the load balancer's own figures ------------------------------------------------
    def metrics(self) -> dict[str, float]:
        status, body = get(self.stats_addr, "bench", "/metrics/runtime", timeout=10)
        if status != 200:
            raise RuntimeError(f"/metrics/runtime answered {status}")
        return parse_metrics(body.decode())

    def state(self) -> dict[str, Any]:
        status, body = get(self.stats_addr, "bench", "/_consul_lb/state", timeout=10)
        if status != 200:
            raise RuntimeError(f"/_consul_lb/state answered {status}")
        result: dict[str, Any] = json.loads(body)
        return result

    def render_seconds(self) -> float | None:
        """How long the runtime's render of its last applied change took (model, port
        probe and template): its state's ``last_change``; else the gauge
        ``consul_lb_render_duration_seconds``, which a later render that changed
        nothing (a late notification of the same change) may have replaced."""
        with suppress(RuntimeError, ValueError):
            change = self.state().get("last_change") or {}
            if change.get("rendered") and change.get("snapshot"):
                return float(change["rendered"] - change["snapshot"])
            return self.metrics().get("consul_lb_render_duration_seconds")
        return None

    def changes(self) -> int:
        return int(self.metrics().get("consul_lb_changes_applied_total", 0))

    def wait_changes(self, above: int, timeout: float = APPLY_TIMEOUT) -> bool:
        """Until the runtime applied more than ``above`` changes (runtime API or reload)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(RuntimeError, ValueError):
                if self.changes() > above:
                    return True
            time.sleep(0.02)
        return False

    def quiet(self, seconds: float = 1.0, timeout: float = 60.0) -> None:
        """Until the runtime made no Consul request and applied nothing for ``seconds``."""
        deadline = time.monotonic() + timeout
        last: tuple[float, float] | None = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            m = self.metrics()
            figures = (m["consul_lb_consul_requests_total"], m["consul_lb_renders_total"])
            if figures != last:
                last, since = figures, time.monotonic()
            elif time.monotonic() - since >= seconds:
                return
            time.sleep(0.1)

    def routed(self, row: Row) -> None:
        """Backends and servers HAProxy itself has, from its stats CSV."""
        status, body = get(self.stats_addr, "bench", "/;csv", timeout=60)
        if status != 200:
            row.notes.append(f"stats CSV answered {status}")
            return
        text = body.decode(errors="replace").lstrip("# ")
        backends = servers = 0
        for rec in csv.DictReader(io.StringIO(text)):
            if not rec.get("pxname", "").endswith(f".{DOMAIN}"):
                continue
            if rec["svname"] == "BACKEND":
                backends += 1
            elif rec["svname"] != "FRONTEND":
                servers += 1
        row.backends, row.servers = backends, servers
        row.probe_ok = backend_of(get(self.http_addr, f"{PROBE}.{DOMAIN}")) == "A"

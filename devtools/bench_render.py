"""``invoke bench render``: what rendering costs as the catalog grows.

For 100, 1,000 and 5,000 services of 5 instances each:

- render: ``model.build`` + ``Renderer.render`` of an in-memory catalog (best of a few
  runs), and ``haproxy -c`` of the result with the image's own HAProxy;
- RSS: the runtime itself (``consul-lb haproxy`` in the HAProxy image) against a real
  Consul filled with the services, read from ``/proc`` once it has applied them;

and, with 1,000 services, the number of Consul requests the watcher makes for one
changed service (it should not grow with the number of services).

Everything runs on this machine: containers on a network of their own, Consul published
on 127.0.0.1 only. Containers and network are removed at the end.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from consul_lb import model
from consul_lb.consul.catalog import Catalog, Instance, Service
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.catalog_watch import CatalogWatcher
from consul_lb.consul.client import ConsulClient
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import fit
from consul_lb.render import Renderer
from consul_lb.settings import from_env

from devtools import images
from devtools.haproxy_check import HaproxyChecker

SIZES = (100, 1000, 5000)
INSTANCES = 5
CHANGE_AT = 1000  # services in Consul when the requests per change are counted
DOMAIN = "bench.local"
ENABLE = "HAPROXY.ENABLE=true"
TXN_OPS = 64  # Consul's limit of operations per /v1/txn
# The runtime holds one blocking query (one connection) per service; 5,000 services need
# more than the 4,096 connections per client that the project's Consul image allows.
CONSUL_COMMAND = images.consul_dev_command(12000)
RSS_SCRIPT = r"""
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    rss = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")), "0")
    print(rss, b" ".join(cmd[:3]).decode(errors="replace"))
"""


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


def synthetic_catalog(services: int) -> Catalog:
    return Catalog(
        tuple(
            Service(
                service_name(i),
                (ENABLE,),
                tuple(
                    Instance(
                        f"node-{j}", f"{service_name(i)}-{j}", f"10.1.{j}.{i % 250 + 1}", 8000, (ENABLE,)
                    )
                    for j in range(INSTANCES)
                ),
            )
            for i in range(services)
        )
    )


@dataclass
class Row:
    services: int
    render_ms: float = 0.0
    check_ms: float = 0.0
    config_kib: float = 0.0
    rss_mib: float = 0.0
    haproxy_rss_mib: float = 0.0
    first_apply_s: float = 0.0
    outcome: str = ""  # "applied", or why HAProxy does not run the configuration


def bench_render(checker: HaproxyChecker, row: Row) -> None:
    settings = from_env({"HAPROXY_DOM": DOMAIN})
    limits = fit(settings.maxconn_global, settings.maxconn, nofile=checker.nofile)
    paths = Paths(Path("/var/lib/consul-lb")).template_paths()
    catalog = synthetic_catalog(row.services)
    best = float("inf")
    for _ in range(3 if row.services <= 1000 else 2):
        started = time.perf_counter()
        lb, _ = model.build(catalog, settings)
        # A fresh renderer each time: the render of a whole new catalog, not of a change.
        files = Renderer(settings, paths, [images.ROOT / "templates"]).render(lb, limits)
        best = min(best, time.perf_counter() - started)
    result = checker.check(files.files(), timeout=300)
    if not result.ok:
        raise RuntimeError(f"haproxy -c rejected {row.services} services: {result.alerts[:3]}")
    row.render_ms, row.check_ms = best * 1000, result.seconds * 1000
    row.config_kib = len(files.config.encode()) / 1024


class Bench:
    """The containers of the RSS and request measurements, removed on exit."""

    def __init__(self, names: images.ImageNames, out: Callable[[str], None]) -> None:
        self.out = out
        self.client = docker.from_env()
        self.names = names
        self.prefix = f"consul-lb-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.created: list[Any] = []
        self.network: Any = None
        self.consul: Any = None
        self.consul_url = ""
        self.filled = 0
        self.http = requests.Session()

    def start_consul(self) -> None:
        self.network = self.client.networks.create(self.prefix, driver="bridge")
        self.consul = self.client.containers.run(
            images.present_consul_image(self.client),
            command=CONSUL_COMMAND,
            network=self.network.name,
            name=f"{self.prefix}-consul",
            ports={"8500/tcp": ("127.0.0.1", None)},
            detach=True,
        )
        self.created.append(self.consul)
        self.consul_url = f"http://127.0.0.1:{images.host_port(self.consul, 8500)}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with suppress(requests.RequestException):
                if self.http.get(f"{self.consul_url}/v1/status/leader", timeout=2).json():
                    return
            time.sleep(0.2)
        raise RuntimeError("Consul did not elect itself leader within 60s")

    def txn(self, ops: list[dict[str, Any]]) -> None:
        r = requests.put(f"{self.consul_url}/v1/txn", json=ops, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"Consul /v1/txn: HTTP {r.status_code}: {r.text[:200]}")

    def instance_op(self, i: int, j: int, suffix: str = "") -> dict[str, Any]:
        # Servers on 127.0.0.1: HAProxy's health checks are refused at once instead of
        # waiting for timeouts to addresses that do not exist.
        return {
            "Service": {
                "Verb": "set",
                "Node": f"node-{j}",
                "Service": {
                    "ID": f"{service_name(i)}-{j}{suffix}",
                    "Service": service_name(i),
                    "Address": "127.0.0.1",
                    "Port": 10000 + (i * INSTANCES + j) % 50000,
                    "Tags": [ENABLE],
                },
            }
        }

    def fill(self, services: int) -> None:
        """Register services ``filled..services`` x 5 instances, 64 per transaction."""
        started = time.monotonic()
        if self.filled == 0:
            self.txn(
                [
                    {"Node": {"Verb": "set", "Node": {"Node": f"node-{j}", "Address": "127.0.0.1"}}}
                    for j in range(INSTANCES)
                ]
            )
        ops = [
            self.instance_op(i, j) for i in range(self.filled, services) for j in range(INSTANCES)
        ]
        batches = [ops[k : k + TXN_OPS] for k in range(0, len(ops), TXN_OPS)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(self.txn, batches))
        self.filled = services
        self.out(
            f"  Consul: {services} services x {INSTANCES} instances registered "
            f"({len(batches)} transactions, {time.monotonic() - started:.1f}s)"
        )

    def runtime_rss(self, row: Row) -> None:
        """Start the runtime against the filled Consul, wait until it has applied every
        service, then read the VmRSS of its Python process (and of HAProxy's)."""
        started = time.monotonic()
        container = self.client.containers.run(
            self.names.ref("haproxy"),
            environment={
                "HAPROXY_DOM": DOMAIN,
                "CONSUL_HTTP_ADDR": f"{self.prefix}-consul:8500",
            },
            network=self.network.name,
            name=f"{self.prefix}-haproxy-{row.services}",
            detach=True,
        )
        self.created.append(container)
        try:
            # The runtime has rendered the whole catalog once it logs either outcome of
            # applying it; a failure is a finding to report, not a reason to stop.
            outcome = re.compile(
                rf"(applied: {row.services} service\(s\))|(\[ALERT\].*)|"
                r"(rejected by haproxy -c.*|haproxy (?:restart|reload) failed.*)"
            )
            deadline = time.monotonic() + 300
            while not (found := outcome.search(logs := container.logs().decode(errors="replace"))):
                container.reload()
                if time.monotonic() > deadline or container.status == "exited":
                    raise RuntimeError(f"the runtime did not apply {row.services}: {logs[-800:]}")
                time.sleep(0.2)
            row.first_apply_s = time.monotonic() - started
            row.outcome = "applied" if found.group(1) else re.sub(r"\(\d+\) ", "", found.group(0))
            time.sleep(2)  # let the first reload settle before reading memory
            code, output = container.exec_run(["python3", "-c", RSS_SCRIPT])
            if code != 0:
                raise RuntimeError(f"reading /proc failed: {output[:200]!r}")
            for line in output.decode().splitlines():
                kib, _, command = line.partition(" ")
                if "consul-lb" in command and "python" in command:
                    row.rss_mib = max(row.rss_mib, int(kib) / 1024)
                elif command.startswith("haproxy"):
                    row.haproxy_rss_mib += int(kib) / 1024
        finally:
            container.remove(force=True)
            self.created.remove(container)

    def requests_per_change(self) -> tuple[int, float]:
        """Consul requests the watcher makes for one changed service, and how long the
        change took to show in its snapshot."""
        host, _, port = self.consul_url.removeprefix("http://").partition(":")
        client = ConsulClient(ConsulConfig(host=host, port=int(port)))
        watcher = CatalogWatcher(client, model.wants, lambda: None)
        watcher.start()
        try:
            deadline = time.monotonic() + 120

            def until(done: Callable[[], bool], what: str) -> None:
                while not done():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the watcher did not {what} within 120s")
                    time.sleep(0.01)

            until(
                lambda: watcher.ready() and len(watcher.snapshot().services) == self.filled,
                "read every service",
            )
            time.sleep(1)  # every watch is now parked in its blocking query
            before = client.stats.requests
            changed = service_name(CHANGE_AT // 2)
            started = time.monotonic()
            self.txn([self.instance_op(CHANGE_AT // 2, 0, suffix="-extra")])

            def seen() -> bool:
                service = watcher.snapshot().get(changed)
                return service is not None and len(service.instances) == INSTANCES + 1

            until(seen, "see the change")
            took = time.monotonic() - started
            time.sleep(1)  # count late wake-ups caused by the same change too
            return client.stats.requests - before, took
        finally:
            watcher.stop()

    def close(self) -> None:
        for container in reversed(self.created):
            with suppress(docker.errors.NotFound):
                container.remove(force=True)
        if self.network is not None:
            # Stopped watchers may still hold blocking queries; the container is gone.
            with suppress(docker.errors.APIError):
                self.network.remove()


def table(rows: list[Row], requests_made: int, change_s: float) -> list[str]:
    lines = [
        "| services | servers | render (model + template) | haproxy -c | haproxy.cfg "
        "| runtime RSS | HAProxy RSS | start to first apply | outcome |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.services:,} | {r.services * INSTANCES:,} | {r.render_ms:,.0f} ms "
            f"| {r.check_ms:,.0f} ms | {r.config_kib:,.0f} KiB | {r.rss_mib:.1f} MiB "
            f"| {r.haproxy_rss_mib:.1f} MiB | {r.first_apply_s:.1f} s | {r.outcome} |"
        )
    lines += [
        "",
        f"Consul requests for one changed service out of {CHANGE_AT:,}: **{requests_made}** "
        f"(change seen by the watcher after {change_s * 1000:.0f} ms)",
    ]
    return lines


def main(names: images.ImageNames, out: Callable[[str], None] = print) -> None:
    rows = {n: Row(n) for n in SIZES}
    started = time.monotonic()
    out(f"render and haproxy -c ({names.ref('haproxy')}):")
    with HaproxyChecker(names.ref("haproxy")) as checker:
        for n in SIZES:
            bench_render(checker, rows[n])
            out(f"  {n} services: {rows[n].render_ms:.0f} ms + {rows[n].check_ms:.0f} ms")
    out("runtime against a real Consul:")
    with closing(Bench(names, out)) as b:
        b.start_consul()
        requests_made, change_s = 0, 0.0
        for n in SIZES:
            b.fill(n)
            if n == CHANGE_AT:
                requests_made, change_s = b.requests_per_change()
                out(f"  one changed service out of {n}: {requests_made} Consul requests")
            b.runtime_rss(rows[n])
            out(f"  {n} services: runtime RSS {rows[n].rss_mib:.1f} MiB, {rows[n].outcome}")
    out("")
    for line in table(list(rows.values()), requests_made, change_s):
        out(line)
    out(f"\n(bench took {time.monotonic() - started:.0f}s)")

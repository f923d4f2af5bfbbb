"""``invoke bench scale``: the load balancer against a Consul agent with its DEFAULT limits
holding 100, 1,000 and 5,000 services of 5 instances each, side by side, in one run.

For each size:

- in-process, on an equal catalog: ``model.build`` + ``Renderer.render`` as the runtime
  runs them, for its first render of the whole catalog (best of a few) and for one
  changed service (warm model cache and renderer), and ``haproxy -c`` of the result with
  the image's own HAProxy;
- the image (``consul-lb haproxy``) started against that Consul, one container per size:
  time from the container's start (Docker's ``StartedAt``) to its first applied
  configuration (its log line ``applied: ...``); every service and server routed
  (HAProxy's own stats list them); its render metric; the RSS of the runtime's Python
  process (settled, and its peak ``VmHWM``) and of HAProxy, from ``/proc``; connections
  to Consul COUNTED in the container's network namespace (``/proc/<pid>/net/tcp``,
  sampled every 0.1 s: the most open at once) next to the runtime's own
  ``consul_lb_consul_connections_opened``; Consul requests for one changed instance
  (``consul_lb_consul_requests_total`` before and after one registration, once quiet);
- Consul change -> first routed request: from the ``PUT /v1/catalog/register`` to the
  first HTTP 200 from the new instance through HAProxy (with the service's Host header,
  a new connection every ~2 ms), on the no-reload path (one more instance of an existing
  service: the runtime API) and on the reload path (a new service); and where the time
  of the no-reload path goes, from the runtime's state: when its services watch got
  Consul's answer and its service read ended (``watches``), then the loop's stages
  (``last_change``). These are Unix times: host and containers share one clock.

One of the services is the probe: one instance on a sample backend ("A"); the timed
instances go to a second one ("B"). Both are HAProxy answering by itself, so that the
backends add no time of their own. The other services' instances are on 127.0.0.1
ports nothing listens on (health checks are refused at once). Everything runs on this
machine: containers on a network of the bench's own (reached at their addresses when
this host can, else through ports published on 127.0.0.1); every container and the
network are removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import math
import os
import re
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from consul_lb import model
from consul_lb.consul.catalog import Catalog, Instance, Service
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import fit
from consul_lb.render import Renderer
from consul_lb.settings import from_env

from devtools import images
from devtools.haproxy_check import HaproxyChecker
from devtools.loadclient import percentile

Addr = tuple[str, int]  # (host, port)
SIZES = (100, 1000, 5000)
ROUNDS = 50  # at 100 services; fewer at larger sizes (rounds_at)
RENDER_WAIT = "10ms:100ms"  # as `bench converge`; the figures use it
INSTANCES = 5
DOMAIN = "bench.local"
ENABLE = "HAPROXY.ENABLE=true"
PROBE = "probe"  # the service of the no-reload rounds
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
POLL = 0.002  # seconds between two requests while waiting for the first routed one
FIRST_APPLY_TIMEOUT = 600.0
ROUND_TIMEOUT = {"no reload": 30.0, "reload": 60.0}
APPLY_TIMEOUT = 120.0
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (\w+) (\S+): (.*)$")
APPLIED = re.compile(r"applied: (\d+) services?, (\d+) servers?.*?(\d+) ms\)$")
WATCHING = re.compile(r"watching Consul at ")
# /proc/net/tcp states that hold a connection open (all but TIME_WAIT, CLOSE, LISTEN).
OPEN_STATES = frozenset({"01", "02", "03", "04", "05", "08", "09", "0B"})
# The stages of the no-reload path, in order: (key, what happened at that time).
STAGES = (
    ("answered", "the runtime's services watch has Consul's answer"),
    ("read", "the changed service read (UI summaries, then the service)"),
    ("changed", "the change reaches the runtime's loop"),
    ("snapshot", "snapshot taken (render wait over)"),
    ("rendered", "rendered (model + template)"),
    ("commands", "runtime-API commands done"),
    ("applied", "files installed"),
    ("routed", "first request routed to the new instance"),
)
# Runs inside the load balancer container when its processes cannot be read from this
# host's /proc (a remote Docker engine): the same data as snapshot_host().
PROC_SCRIPT = r"""
import json, os
procs = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    procs.append([int(pid), argv, status])
print(json.dumps({"tcp": open("/proc/net/tcp").read(), "procs": procs}))
"""


def service_name(i: int) -> str:
    return PROBE if i == 0 else f"svc-{i:05d}"


def port_of(i: int, j: int) -> int:
    return 10000 + (i * INSTANCES + j) % 50000


def expected_servers(services: int) -> int:
    return (services - 1) * INSTANCES + 1  # the probe has one instance


def rounds_at(services: int, rounds: int) -> int:
    """Rounds at a size: ``rounds`` at 100 services or fewer, then fewer as a change
    costs more (divided by the square root of the growth), at least 5."""
    if services <= 100:
        return rounds
    return max(min(rounds, 5), math.ceil(rounds / math.sqrt(services / 100)))


def now_s(stamp: str) -> float:
    """Unix time of an ISO time in UTC (Docker's nanoseconds cut to microseconds)."""
    stamp = stamp.rstrip("Z")
    head, _, frac = stamp.partition(".")
    parsed = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    return parsed.timestamp()


# -- in-process render and haproxy -c ------------------------------------------------
def synthetic_catalog(services: int, probe_address: str = "10.0.0.1") -> Catalog:
    """The catalog the bench registers in Consul, as the watcher would hand it over."""
    entries = [
        Service(
            PROBE, (ENABLE,), (Instance("node-0", f"{PROBE}-a", probe_address, 8000, (ENABLE,)),)
        )
    ]
    for i in range(1, services):
        name = service_name(i)
        entries.append(
            Service(
                name,
                (ENABLE,),
                tuple(
                    Instance(f"node-{j}", f"{name}-{j}", "127.0.0.1", port_of(i, j), (ENABLE,))
                    for j in range(INSTANCES)
                ),
            )
        )
    return Catalog(tuple(sorted(entries, key=lambda s: s.name)))


def with_one_more_instance(catalog: Catalog, name: str, k: int) -> Catalog:
    return Catalog(
        tuple(
            s
            if s.name != name
            else Service(
                s.name,
                s.tags,
                (*s.instances, Instance("node-0", f"{name}-x{k}", "127.0.0.1", 9, (ENABLE,))),
            )
            for s in catalog.services
        )
    )


@dataclass
class Row:
    services: int
    rounds: int = 0
    # in-process
    render_s: float | None = None
    render_change_s: float | None = None
    check_s: float | None = None
    config_kib: float | None = None
    # the image against Consul
    first_apply_s: float | None = None
    all_apply_s: float | None = None
    # Of the time to the first apply: until the runtime watches Consul (HAProxy started),
    # reading Consul, applying (render, haproxy -c, reload).
    start_parts: tuple[float, float, float] | None = None
    backends: int | None = None
    servers: int | None = None
    probe_ok: bool = False
    render_runtime_s: float | None = None  # its first render of the whole catalog
    render_change_runtime_s: float | None = None  # its render of one changed instance
    rss_mib: float | None = None
    rss_peak_mib: float | None = None
    haproxy_rss_mib: float | None = None
    conns_max: int | None = None
    conns_opened: int | None = None
    requests: list[int] = field(default_factory=list)
    delays: dict[str, list[float]] = field(default_factory=lambda: {"no reload": [], "reload": []})
    timeouts: dict[str, int] = field(default_factory=lambda: {"no reload": 0, "reload": 0})
    stages: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in STAGES})
    notes: list[str] = field(default_factory=list)


def render_in_process(checker: HaproxyChecker, row: Row) -> None:
    """Model and template as the runtime runs them (``Applier.plan``) on an equal catalog:
    its first render of the whole catalog, then the render of one changed service."""
    settings = from_env({"HAPROXY_DOM": DOMAIN})
    catalog = synthetic_catalog(row.services)
    limits = fit(
        settings.maxconn_global,
        settings.maxconn,
        nofile=checker.nofile,
        servers=expected_servers(row.services),
    )
    state = Paths(Path("/var/lib/consul-lb"))
    templates = [images.ROOT / "templates"]

    def started_renderer() -> Renderer:
        # As at the runtime's start: the templates compiled by the render of the empty
        # configuration, no backend section cached yet.
        renderer = Renderer(settings, state.template_paths(), templates)
        renderer.render(model.build(Catalog(), settings)[0], limits, waiting=True)
        return renderer

    best = float("inf")
    for _ in range(3 if row.services <= 1000 else 2):
        renderer, cache = started_renderer(), model.Candidates()
        started = time.perf_counter()
        # No tcp port or route is held: none of these services claims one.
        lb, _ = model.build(catalog, settings, None, cache)
        files = renderer.render(lb, limits)
        best = min(best, time.perf_counter() - started)
    row.render_s = best
    # A change: one more instance of one service, with the warm model cache and renderer
    # of the last round (the runtime keeps both between changes).
    changed = service_name(row.services // 2)
    best = float("inf")
    for k in range(4):
        step = with_one_more_instance(catalog, changed, k) if k % 2 == 0 else catalog
        started = time.perf_counter()
        lb, _ = model.build(step, settings, None, cache)
        renderer.render(lb, limits)
        best = min(best, time.perf_counter() - started)
    row.render_change_s = best
    result = checker.check(files.files(), timeout=300, live=state.live)
    if not result.ok:
        row.notes.append(f"haproxy -c rejected the in-process rendering: {result.alerts[:2]}")
    row.check_s = result.seconds
    row.config_kib = len(files.config.encode()) / 1024


# -- what runs in and around the load balancer container ------------------------------
def ipv4_hex(address: str) -> str:
    """An IPv4 address as /proc/net/tcp writes it (little-endian hex)."""
    return "".join(f"{int(octet):02X}" for octet in reversed(address.split(".")))


def open_connections(tcp: str, address: str, port: int) -> int:
    """Connections open to ``address:port`` in a /proc/net/tcp table."""
    wanted = f"{ipv4_hex(address)}:{port:04X}"
    count = 0
    for line in tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[2] == wanted and fields[3] in OPEN_STATES:
            count += 1
    return count


def status_kib(status: str, key: str) -> int:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Processes:
    """The load balancer's processes at one instant."""

    tcp: str = ""
    runtime_rss_kib: int = 0
    runtime_hwm_kib: int = 0
    haproxy_rss_kib: int = 0  # master and workers (shared pages counted in each)


def classify(tcp: str, procs: list[tuple[list[str], str]]) -> Processes:
    found = Processes(tcp=tcp)
    for argv, status in procs:
        name = os.path.basename(argv[0]) if argv else ""
        if name.startswith("python") and any("consul-lb" in a for a in argv[:3]):
            found.runtime_rss_kib = max(found.runtime_rss_kib, status_kib(status, "VmRSS"))
            found.runtime_hwm_kib = max(found.runtime_hwm_kib, status_kib(status, "VmHWM"))
        elif name == "haproxy" and "-c" not in argv:  # not the runtime's haproxy -c
            found.haproxy_rss_kib += status_kib(status, "VmRSS")
    return found


def snapshot_host(pid: int) -> Processes:
    """The container's processes from this host's /proc: ``pid`` (its init) and every
    descendant (the children of each of their threads)."""
    procs: list[tuple[list[str], str]] = []
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        base = Path(f"/proc/{p}")
        try:
            argv = base.joinpath("cmdline").read_bytes().decode(errors="replace").split("\0")
            procs.append((argv, base.joinpath("status").read_text()))
            for task in base.joinpath("task").iterdir():
                todo += [int(c) for c in task.joinpath("children").read_text().split()]
        except OSError:
            continue  # it exited meanwhile
    return classify(Path(f"/proc/{pid}/net/tcp").read_text(), procs)


class Sampler(threading.Thread):
    """Counts the load balancer container's connections open to Consul every 0.1 s (0.5 s
    through ``docker exec``) and keeps the largest number; ``now`` reads its processes."""

    def __init__(self, container: Any, consul_ip: str) -> None:
        super().__init__(name="sampler", daemon=True)
        self.container = container
        self.consul_ip = consul_ip
        self.pid = int(container.attrs["State"]["Pid"])
        self.host = os.access(f"/proc/{self.pid}/net/tcp", os.R_OK)
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.conns_max = 0

    def snapshot(self) -> Processes:
        if self.host:
            return snapshot_host(self.pid)
        code, output = self.container.exec_run(["python3", "-c", PROC_SCRIPT])
        if code != 0:
            raise RuntimeError(f"reading /proc in the container failed: {output[:200]!r}")
        data = json.loads(output)
        return classify(data["tcp"], [(argv, status) for _, argv, status in data["procs"]])

    def connections(self) -> int:
        tcp = Path(f"/proc/{self.pid}/net/tcp").read_text() if self.host else self.snapshot().tcp
        return open_connections(tcp, self.consul_ip, 8500)

    def run(self) -> None:
        while not self.stopped.wait(0.1 if self.host else 0.5):
            with suppress(OSError, RuntimeError, docker.errors.APIError):
                conns = self.connections()
                with self.lock:
                    self.conns_max = max(self.conns_max, conns)

    def now(self) -> Processes:
        procs = self.snapshot()
        with self.lock:
            self.conns_max = max(self.conns_max, open_connections(procs.tcp, self.consul_ip, 8500))
        return procs

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


@dataclass(frozen=True)
class Applied:
    at: float  # Unix time of the log line
    services: int
    servers: int
    took: float  # seconds the apply took (render, haproxy -c, reload or runtime API)


class LogFollower(threading.Thread):
    """Follows the container's log; keeps its ``applied: ...`` lines and reports the
    runtime's warnings and errors (each distinct one once, a few at most)."""

    def __init__(self, container_id: str, say: Callable[[str], None]) -> None:
        super().__init__(name="logs", daemon=True)
        self.container_id = container_id
        self.say = say
        self.applied: list[Applied] = []
        self.watching: float | None = None  # when the runtime began to watch Consul
        self.reported: set[str] = set()
        self.lock = threading.Lock()

    def run(self) -> None:
        client = docker.from_env()
        with suppress(docker.errors.APIError, requests.RequestException, OSError):
            stream = client.api.logs(self.container_id, stream=True, follow=True)
            pending = b""
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.line(line.decode(errors="replace"))
        client.close()

    def line(self, text: str) -> None:
        m = LOG_LINE.match(text)
        if not m:
            return
        stamp, level, component, message = m.groups()
        applied = APPLIED.match(message)
        if applied:
            with self.lock:
                self.applied.append(
                    Applied(
                        now_s(stamp),
                        int(applied.group(1)),
                        int(applied.group(2)),
                        int(applied.group(3)) / 1000,
                    )
                )
        elif WATCHING.match(message):
            self.watching = now_s(stamp)
        elif level in ("WARNING", "ERROR") and len(self.reported) < 8:
            key = re.sub(r"\d+", "N", message)[:120]
            if key not in self.reported:
                self.reported.add(key)
                self.say(f"    runtime {level.lower()}: {component}: {message[:300]}")

    def wait(self, done: Callable[[Applied], bool], deadline: float) -> Applied | None:
        while time.monotonic() < deadline:
            with self.lock:
                found = next((a for a in self.applied if done(a)), None)
            if found is not None or not self.is_alive():
                return found
            time.sleep(0.05)
        return None


def get(addr: Addr, host: str, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    """One request on a new connection; (0, b"") when it fails."""
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def backend_of(answer: tuple[int, bytes]) -> str:
    status, body = answer
    if status != 200:
        return ""
    try:
        return str(json.loads(body)["backend"])
    except (ValueError, KeyError, TypeError):
        return ""


def first_routed(addr: Addr, host: str, backend: str, deadline: float) -> float | None:
    """Poll until ``backend`` answers for ``host``: the Unix time of that answer."""
    while time.time() < deadline:
        if backend_of(get(addr, host)) == backend:
            return time.time()
        time.sleep(POLL)
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: each metric name -> the sum over its label sets."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.partition("{")[0]
        with suppress(ValueError):
            values[name] = values.get(name, 0.0) + float(value)
    return values


# -- the run --------------------------------------------------------------------------
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
            images.present_consul_image(self.client),
            "consul",
            command=images.consul_dev_command(),
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

    # -- one size -----------------------------------------------------------------------
    def measure(self, row: Row) -> None:
        n = row.services
        self.say(f"  starting the load balancer ({self.names.ref('haproxy')}) for {n:,} services")
        lb = self.run(
            self.names.ref("haproxy"),
            f"lb-{n}",
            environment={
                "HAPROXY_DOM": DOMAIN,
                "CONSUL_HTTP_ADDR": f"{self.prefix}-consul:8500",
                "HAPROXY_RENDER_WAIT": self.render_wait,
            },
            ports={"8080/tcp": ("127.0.0.1", None), "4444/tcp": ("127.0.0.1", None)},
        )
        self.lb = lb
        sampler: Sampler | None = None
        try:
            lb.reload()
            started_at = now_s(lb.attrs["State"]["StartedAt"])
            if self.direct:
                ip = images.container_ip(lb, self.network.name)
                self.http_addr, self.stats_addr = (ip, 8080), (ip, 4444)
            else:
                self.http_addr = ("127.0.0.1", images.host_port(lb, 8080))
                self.stats_addr = ("127.0.0.1", images.host_port(lb, 4444))
            logs = LogFollower(lb.id, self.say)
            logs.start()
            sampler = Sampler(lb, self.consul_ip)
            sampler.start()
            if not sampler.host:
                row.notes.append("processes read with docker exec (no access to their /proc)")
            deadline = time.monotonic() + FIRST_APPLY_TIMEOUT
            first = logs.wait(lambda a: True, deadline)
            if first is None:
                row.notes.append(f"no configuration applied within {FIRST_APPLY_TIMEOUT:.0f} s")
                self.say(f"  {n:,}: {row.notes[-1]}")
                return
            row.render_runtime_s = self.render_seconds()
            row.first_apply_s = first.at - started_at
            if logs.watching is not None:
                began = first.at - first.took
                row.start_parts = (
                    logs.watching - started_at,
                    began - logs.watching,
                    first.took,
                )
            self.say(
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
                row.notes.append(
                    f"not all {n:,} services applied within {FIRST_APPLY_TIMEOUT:.0f} s"
                )
                return
            row.all_apply_s = full.at - started_at
            self.quiet()
            self.routed(row)
            procs = sampler.now()
            row.rss_mib = procs.runtime_rss_kib / 1024
            row.haproxy_rss_mib = procs.haproxy_rss_kib / 1024
            self.say(
                f"  routed: {row.backends:,}/{n:,} services, {row.servers:,}/"
                f"{expected_servers(n):,} servers, probe {'answers' if row.probe_ok else 'FAILS'}; "
                f"runtime RSS {row.rss_mib:.1f} MiB, HAProxy {row.haproxy_rss_mib:.1f} MiB"
            )
            self.requests_per_change(row)
            self.change_rounds(row, "no reload")
            self.change_rounds(row, "reload")
            procs = sampler.now()
            row.rss_peak_mib = procs.runtime_hwm_kib / 1024
            with suppress(RuntimeError, ValueError):
                row.conns_opened = int(self.metrics()["consul_lb_consul_connections_opened"])
        finally:
            if sampler is not None:
                sampler.stop()
                row.conns_max = sampler.conns_max
            self.lb = None
            with suppress(docker.errors.APIError):
                lb.remove(force=True)

    def requests_per_change(self, row: Row, times: int = 3) -> None:
        """Consul requests the runtime makes for one more instance of one service, once
        quiet (3 times: an idle blocking query that happens to end in the window adds one)."""
        victim = service_name(min(row.services - 1, 1))
        for k in range(times):
            self.quiet()
            before, applied = self.metrics(), self.changes()
            sid = f"{victim}-extra-{k}"
            self.register(victim, sid, "127.0.0.1", 9)
            if not self.wait_changes(applied):
                row.notes.append("one registration was not applied within 120 s")
                return
            self.quiet()
            after = self.metrics()
            row.requests.append(
                int(
                    after["consul_lb_consul_requests_total"]
                    - before["consul_lb_consul_requests_total"]
                )
            )
            row.render_change_runtime_s = self.render_seconds()
            applied = self.changes()
            self.deregister(sid)
            self.wait_changes(applied)
        self.say(
            f"  Consul requests for one changed instance: {row.requests}; render of that "
            f"change {ms(row.render_change_runtime_s)}"
        )

    def change_rounds(self, row: Row, path: str) -> None:
        """Time ``row.rounds`` changes on ``path``: "no reload" registers one more instance
        of the probe service (on B), "reload" a new service (on B)."""
        self.say(f"  {row.rounds} changes on the {path} path:")
        last_said = time.monotonic()
        for k in range(row.rounds):
            self.quiet(0.3, timeout=30)
            if path == "no reload":
                service, sid = PROBE, f"{PROBE}-b{k}"
            else:
                service = f"fresh-{k}"
                sid = f"{service}-b"
            host = f"{service}.{DOMAIN}"
            applied = self.changes()
            t0 = time.time()
            self.register(service, sid, self.echo_ip["B"])
            routed = first_routed(self.http_addr, host, "B", t0 + ROUND_TIMEOUT[path])
            ok = self.wait_changes(applied)
            if routed is None:
                row.timeouts[path] += 1
            else:
                row.delays[path].append(routed - t0)
                if path == "no reload" and ok:
                    self.stages(row, t0, routed)
            applied = self.changes()
            self.deregister(sid)
            self.wait_changes(applied)
            if path == "no reload" and not self.deleted(host, sid):
                row.notes.append(f"{sid} still in HAProxy 15 s after its deregistration")
            if time.monotonic() - last_said > 15 or k + 1 == row.rounds:
                done = row.delays[path]
                self.say(
                    f"    {k + 1}/{row.rounds}: p50 {percentile(done, 0.5) * 1000:.0f} ms, "
                    f"max {max(done, default=0) * 1000:.0f} ms, {row.timeouts[path]} timed out"
                )
                last_said = time.monotonic()

    def deleted(self, backend: str, server: str, timeout: float = 15.0) -> bool:
        """Until HAProxy no longer has ``server`` (drained, then deleted by the runtime's
        next look at its drains, every 0.5 s): the next round starts with none."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = get(self.stats_addr, "bench", f"/;csv;norefresh?scope={backend}")
            if status == 200 and f"{backend},{server}," not in body.decode(errors="replace"):
                return True
            time.sleep(0.1)
        return False

    def stages(self, row: Row, t0: float, routed: float) -> None:
        """The runtime's own times of the change (its state): when its watches got
        Consul's answers, and the loop's ``last_change``."""
        state = self.state()
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


# -- the report ---------------------------------------------------------------------
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


def main(
    names: images.ImageNames,
    sizes: tuple[int, ...] = SIZES,
    rounds: int = ROUNDS,
    render_wait: str = RENDER_WAIT,
    out: Callable[[str], None] = print,
) -> None:
    sizes = tuple(sorted(set(sizes)))
    if not sizes or sizes[0] < 2 or rounds < 1:
        raise ValueError("sizes must be at least 2 services and rounds at least 1")
    began = time.monotonic()

    def say(text: str) -> None:
        out(f"[{time.monotonic() - began:5.0f}s] {text}")

    rows = [Row(n, rounds_at(n, rounds)) for n in sizes]
    say(f"load average {os.getloadavg()[0]:.2f}; in-process render and haproxy -c:")
    with HaproxyChecker(names.ref("haproxy")) as checker:
        for row in rows:
            render_in_process(checker, row)
            say(
                f"  {row.services:,} services: render {ms(row.render_s)}, one change "
                f"{ms(row.render_change_s)}, haproxy -c {ms(row.check_s)}"
            )
    say("the image against a default-limit Consul:")
    with closing(Bench(names, render_wait, say)) as bench:
        bench.start()
        for row in rows:
            say(f"{row.services:,} services x {INSTANCES} instances:")
            bench.fill(row.services)
            try:
                bench.measure(row)
            except (RuntimeError, requests.RequestException, docker.errors.APIError) as exc:
                row.notes.append(f"stopped: {exc}")
                say(f"  {row.services:,}: stopped: {exc}")
    load = os.getloadavg()[0]
    out("")
    for text in table(rows):
        out(text)
    out("")
    out(
        f"Consul 1.8.7 dev agent, default limits; HAPROXY_RENDER_WAIT={render_wait}; one of "
        f"the services is the probe (1 instance); change → routed polls every "
        f"{POLL * 1000:.0f} ms on a new connection. Load average at the end {load:.2f}."
    )
    for row in rows:
        for note in row.notes:
            out(f"- {row.services:,}: {note}")
    out(f"(bench took {time.monotonic() - began:.0f} s)")

"""The load balancer container's processes and connections, read from ``/proc`` (this
host's, or the container's through ``docker exec``)."""

from __future__ import annotations

import json
import os
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

# /proc/net/tcp states that hold a connection open (all but TIME_WAIT, CLOSE, LISTEN).
OPEN_STATES = frozenset({"01", "02", "03", "04", "05", "08", "09", "0B"})
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

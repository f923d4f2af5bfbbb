"""`invoke bench tls`: the cost of TLS at the edge, side by side with plain http, and a
certificate rotation under load.

One run: Consul, a fast backend (HAProxy answering 200 itself, so that the load
balancer, not the backend, is measured) and the load balancer from the image, with its
certificate in Consul KV. h2load (Debian's nghttp2-client) runs on this host against the
load balancer's ports published on 127.0.0.1, each row bounded in time:

- new connection per request: rounds of h2load with as many clients as requests (each
  client: connect, handshake, one request); requests per second are handshakes per
  second on the https rows;
- keep-alive: h2load for ``duration`` seconds, 16 connections (HTTP/2: 10 streams each).

Then the https new-connection load runs again while the certificate is replaced in KV
once a second: failed requests, reloads and the HAProxy worker's pid before and after.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devtools import images, local_images
from devtools.certs import Ca

HOST = "bench.bench.local"
KV = "bench/certs/"
BACKEND_CFG = """global
    maxconn 4000
defaults
    mode http
    timeout connect 3s
    timeout client 30s
    timeout server 30s
frontend answer
    bind :8000
    http-request return status 200 content-type text/plain string ok
"""
ROWS = (
    # label, scheme, protocol, keep-alive
    ("http", "http", "HTTP/1.1", False),
    ("https", "https", "HTTP/1.1", False),
    ("https", "https", "HTTP/2", False),
    ("http", "http", "HTTP/1.1", True),
    ("https", "https", "HTTP/1.1", True),
    ("https", "https", "HTTP/2", True),
)
FINISHED = re.compile(r"finished in ([0-9.]+)(m?s), ([0-9.]+) req/s")
REQUESTS = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


@dataclass
class Result:
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0

    def add(self, other: Result) -> None:
        self.requests += other.requests
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.seconds += other.seconds

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0


def h2load(args: list[str]) -> Result:
    proc = subprocess.run(["h2load", *args], capture_output=True, text=True, timeout=120)
    out = proc.stdout
    finished, counts = FINISHED.search(out), REQUESTS.search(out)
    if finished is None or counts is None:
        raise images.ImageError(f"h2load: {(out + proc.stderr).strip()[-400:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    # Failed, errored and timed-out requests are all those that did not succeed.
    total, ok = int(counts.group(1)), int(counts.group(3))
    return Result(total, ok, total - ok, seconds)


def load(url: str, port: int, protocol: str, keep_alive: bool, duration: float) -> Result:
    common = [f"--connect-to=127.0.0.1:{port}", "-H", "user-agent: consul-lb bench"]
    if protocol == "HTTP/1.1":
        common.append("--h1")
    if keep_alive:
        streams = "10" if protocol == "HTTP/2" else "1"
        return h2load([*common, "-c", "16", "-m", streams, "-D", str(int(duration)), url])
    result = Result()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        # 100 clients, one request each: 100 new connections (and handshakes).
        result.add(h2load([*common, "-c", "100", "-n", "100", url]))
    return result


def main(
    names: images.ImageNames, duration: float = 10.0, out: Callable[[str], None] = print
) -> None:
    client = images.client()
    consul_image = local_images.ensure_consul_image(client, local_images.ensure_debian_base(client))
    net = client.networks.create(f"consul-lb-tls-{uuid.uuid4().hex[:6]}")
    containers: list[Any] = []
    scratch = tempfile.TemporaryDirectory(prefix="consul-lb-bench-tls-")

    def run(image: str, *args: Any, **kwargs: Any) -> Any:
        c = client.containers.run(image, *args, network=net.name, detach=True, **kwargs)
        containers.append(c)
        return c

    try:
        cfg = Path(scratch.name, "backend.cfg")
        cfg.write_text(BACKEND_CFG)
        cfg.chmod(0o644)
        Path(scratch.name).chmod(0o755)
        consul = run(
            consul_image, name=f"{net.name}-consul", ports={"8500/tcp": ("127.0.0.1", None)}
        )
        backend = run(
            names.ref("haproxy"),
            ["-f", "/srv/backend.cfg"],
            entrypoint="haproxy",
            volumes={str(cfg): {"bind": "/srv/backend.cfg", "mode": "ro"}},
        )
        lb = run(
            names.ref("haproxy"),
            environment={
                "HAPROXY_DOM": "bench.local",
                "CONSUL_HTTP_ADDR": f"{net.name}-consul:8500",
                "HAPROXY_TLS_CERT_KV": KV,
                "HAPROXY_RENDER_WAIT": "10ms:100ms",
            },
            ports={f"{p}/tcp": ("127.0.0.1", None) for p in (8080, 8443, 4444)},
        )
        ports = {p: images.host_port(lb, p) for p in (8080, 8443, 4444)}
        consul_url = f"http://127.0.0.1:{images.host_port(consul, 8500)}"
        wait(
            lambda: requests.get(f"{consul_url}/v1/status/leader", timeout=1).text != '""', "Consul"
        )
        ca = Ca("consul-lb bench CA")

        def put(bundle: bytes) -> None:
            url = f"{consul_url}/v1/kv/{KV}bench"
            requests.put(url, data=bundle, timeout=5).raise_for_status()

        put(ca.issue(HOST).bundle)
        requests.put(
            f"{consul_url}/v1/agent/service/register",
            json={
                "ID": "bench-1",
                "Name": "bench",
                "Address": images.container_ip(backend),
                "Port": 8000,
                "Tags": ["HAPROXY.ENABLE=true"],
            },
            timeout=5,
        ).raise_for_status()
        stats = f"http://127.0.0.1:{ports[4444]}"
        wait(
            lambda: requests.get(f"{stats}/_consul_lb/state", timeout=2).json()["tls"][
                "https_bound"
            ],
            "the https frontend",
        )
        wait(
            lambda: (
                h2load(
                    [f"--connect-to=127.0.0.1:{ports[8443]}", "-n", "1", f"https://{HOST}:8443/"]
                ).succeeded
                == 1
            ),
            "an https answer",
        )

        out(f"==> {duration:.0f} s per row; h2load {h2load_version()} on this host")
        out("")
        out("| frontend | protocol | connections | requests | failed | requests/s |")
        out("| --- | --- | --- | ---: | ---: | ---: |")
        for label, scheme, protocol, keep_alive in ROWS:
            port = ports[8443 if scheme == "https" else 8080]
            url = f"{scheme}://{HOST}:{8443 if scheme == 'https' else 8080}/"
            r = load(url, port, protocol, keep_alive, duration)
            mode = (
                "keep-alive (16" + (" x 10 streams)" if protocol == "HTTP/2" else ")")
                if keep_alive
                else "new per request"
            )
            rate = f"{r.rate:,.0f}"
            out(f"| {label} | {protocol} | {mode} | {r.requests:,} | {r.failed} | {rate} |")

        def state() -> dict[str, Any]:
            found: dict[str, Any] = requests.get(f"{stats}/_consul_lb/state", timeout=5).json()
            return found

        def worker() -> str:
            script = (
                "import socket; s = socket.socket(socket.AF_UNIX); "
                "s.connect('/var/lib/consul-lb/admin.sock'); s.sendall(b'show info\\n'); "
                "print(s.makefile().read())"
            )
            text = lb.exec_run(["python3", "-c", script]).output.decode()
            return str(
                next(ln.split(":")[1].strip() for ln in text.splitlines() if ln.startswith("Pid:"))
            )

        before, pid = state(), worker()
        stop = threading.Event()
        rotations: list[str] = []

        def rotate() -> None:
            while not stop.wait(1.0):
                leaf = ca.issue(HOST)
                put(leaf.bundle)
                rotations.append(leaf.fingerprint)

        rotator = threading.Thread(target=rotate)
        rotator.start()
        try:
            r = load(f"https://{HOST}:8443/", ports[8443], "HTTP/1.1", False, duration)
        finally:
            stop.set()
            rotator.join()
        time.sleep(1)
        after = state()
        served = after["tls"]["certificates"][0]["sha256"]
        out("")
        out("| certificate rotation under load | |")
        out("| --- | ---: |")
        out(f"| rotations in KV (one a second) | {len(rotations)} |")
        out(f"| https requests, new connection each | {r.requests:,} |")
        out(f"| failed requests | {r.failed} |")
        out(f"| reloads during the run | {after['reloads'] - before['reloads']} |")
        out(f"| HAProxy worker pid before / after | {pid} / {worker()} |")
        last = "yes" if rotations and served == rotations[-1] else "no"
        out(f"| last rotated certificate served | {last} |")
    finally:
        for c in containers:
            c.remove(force=True)
        net.remove()
        scratch.cleanup()


def h2load_version() -> str:
    proc = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip().split("/")[-1]


def wait(check: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, images.ImageError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise images.ImageError(f"timed out waiting for {what}")

"""Consul stopped for 30 s and started again: HAProxy answers throughout (0 failed
requests), and a registration made after the restart is routed.

This test stops Consul, so it does not use the shared pytest-docker stack: it builds its
own network, Consul, HAProxy and backend containers, and removes them afterwards.

Consul's dev mode keeps its catalog in memory and loses it on restart. A real agent
re-registers its services from its configuration files when it starts; the Consul here
does the same (``-config-dir`` with the service definition of ``www``), so the catalog
after the restart is the one before it, as on a real node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from devtools import images, local_images
from tests.integration.conftest import image_names, require_images, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "test.local"
OUTAGE_SECONDS = 30
ENABLE = "HAPROXY.ENABLE=true"
CONSUL_COMMAND = local_images.consul_dev_command("-config-dir=/consul/config")


@dataclass
class OutageStack:
    network: Any
    consul: Any
    haproxy: Any
    backend: Any
    backend_ip: str
    http: str = ""

    @property
    def consul_url(self) -> str:
        # Read again each time: a restarted container may get another host port.
        return f"http://127.0.0.1:{images.host_port(self.consul, 8500)}"

    def get(self, host: str) -> requests.Response:
        return requests.get(self.http, headers={"Host": host}, timeout=2)

    def routed(self, host: str) -> bool:
        r = self.get(host)
        return r.status_code == 200 and r.json().get("backend") == "web-outage"

    def logs(self) -> str:
        return str(self.haproxy.logs().decode(errors="replace"))


@pytest.fixture(scope="module")
def outage() -> Iterator[OutageStack]:
    client = docker.from_env()
    names = image_names()
    require_images(client, names.ref("haproxy"), names.ref("consul-template"))
    try:
        consul_image = local_images.present_consul_image(client)
    except images.ImageError as exc:
        pytest.fail(str(exc))
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    created: list[Any] = []
    config_dir = Path(tempfile.mkdtemp(prefix="consul-lb-outage-"))
    network = client.networks.create(f"consul-lb-outage-{suffix}", driver="bridge")
    try:
        backend = client.containers.run(
            names.ref("consul-template"),
            entrypoint=["python3", "/srv/echo.py"],
            command=[],
            environment={"ECHO_NAME": "web-outage"},
            volumes={str(ROOT / "deploy/demo/echo.py"): {"bind": "/srv/echo.py", "mode": "ro"}},
            network=network.name,
            name=f"consul-lb-outage-web-{suffix}",
            detach=True,
        )
        created.append(backend)
        ip = images.container_ip(backend, network.name)
        definition = {
            "service": {
                "id": "www-1",
                "name": "www",
                "address": ip,
                "port": 8000,
                "tags": [ENABLE],
            }
        }
        (config_dir / "www.json").write_text(json.dumps(definition))
        config_dir.chmod(0o755)
        consul_name = f"consul-lb-outage-consul-{suffix}"
        consul = client.containers.run(
            consul_image,
            command=CONSUL_COMMAND,
            volumes={str(config_dir): {"bind": "/consul/config", "mode": "ro"}},
            network=network.name,
            name=consul_name,
            ports={"8500/tcp": ("127.0.0.1", None)},
            detach=True,
        )
        created.append(consul)
        haproxy = client.containers.run(
            names.ref("haproxy"),
            environment={
                "HAPROXY_DOM": DOMAIN,
                "CONSUL_HTTP_ADDR": f"{consul_name}:8500",
                "HAPROXY_RENDER_WAIT": "50ms:500ms",
            },
            network=network.name,
            name=f"consul-lb-outage-haproxy-{suffix}",
            ports={"8080/tcp": ("127.0.0.1", None)},
            detach=True,
        )
        created.append(haproxy)
        stack = OutageStack(network, consul, haproxy, backend, ip)
        stack.http = f"http://127.0.0.1:{images.host_port(haproxy, 8080)}/"
        yield stack
    finally:
        for container in reversed(created):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        network.remove()
        shutil.rmtree(config_dir, ignore_errors=True)


@dataclass
class Traffic:
    """Requests to www through HAProxy in a background thread, one new connection each
    (a reused connection could hide a listener that stopped accepting)."""

    stack: OutageStack
    interval: float = 0.05
    limit_seconds: float = 240.0  # hard bound whatever happens to the test
    limit_requests: int = 20_000
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_seconds
        host = f"www.{DOMAIN}"
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.requests >= self.limit_requests:
                break
            self.requests += 1
            try:
                r = self.stack.get(host)
                if r.status_code != 200 or r.json().get("backend") != "web-outage":
                    self.failures.append(f"{time.strftime('%X')} HTTP {r.status_code}")
            except (requests.RequestException, ValueError) as exc:
                self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
            self.stop.wait(self.interval)


def test_haproxy_answers_through_a_consul_outage_and_follows_after(outage: OutageStack) -> None:
    www, late = f"www.{DOMAIN}", f"late.{DOMAIN}"
    wait_until(lambda: outage.routed(www), timeout=60, what="www routed before the outage")

    traffic = Traffic(outage)
    thread = threading.Thread(target=traffic.run, name="traffic", daemon=True)
    thread.start()
    try:
        time.sleep(2)
        outage.consul.stop(timeout=10)
        stopped = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        during = traffic.requests
        outage.consul.start()
        restarted = time.monotonic()
        wait_until(
            lambda: (
                "www" in requests.get(f"{outage.consul_url}/v1/catalog/services", timeout=2).json()
            ),
            timeout=30,
            what="Consul back, with www registered again from its config dir",
        )
        body = {
            "ID": "late-1",
            "Name": "late",
            "Address": outage.backend_ip,
            "Port": 8000,
            "Tags": [ENABLE],
        }
        r = requests.put(f"{outage.consul_url}/v1/agent/service/register", json=body, timeout=5)
        r.raise_for_status()
        registered = time.monotonic()
        # Within the watches' retry backoff (at most 10 s) plus the render wait: a watch
        # that failed starts again without an index, so it never waits a full blocking
        # wait (60 s) on an index the restarted Consul has forgotten. 30 s: the backoff, the
        # render wait and a restarted agent on 2 shared cores; still half the stale wait.
        try:
            wait_until(
                lambda: outage.routed(late), timeout=30, what="late routed after the restart"
            )
        except BaseException:
            print(outage.logs()[-6000:])
            raise
        late_after = time.monotonic() - registered
        time.sleep(3)  # keep the traffic going a little after the last change
    finally:
        traffic.stop.set()
        thread.join(timeout=10)

    print(
        f"\nConsul stopped for {restarted - stopped:.1f}s; {traffic.requests} requests to www "
        f"({traffic.requests - during} after the restart), {len(traffic.failures)} failed; "
        f"'late' routed {late_after:.1f}s after its registration "
        f"({registered - restarted:.1f}s after the restart)"
    )
    assert traffic.requests > OUTAGE_SECONDS / traffic.interval / 4, "too few requests made"
    assert not traffic.failures, f"{len(traffic.failures)} failed requests: {traffic.failures[:10]}"

    logs = outage.logs()
    events = Counter(
        "outage" if "unreachable (" in line else "recovery"
        for line in logs.splitlines()
        if "unreachable (" in line or "reachable again" in line
    )
    assert events == {"outage": 1, "recovery": 1}, (
        "the outage should be logged once when it starts and once when it ends:\n"
        + "\n".join(ln for ln in logs.splitlines() if "reachable" in ln or "Consul" in ln)
    )

"""`invoke bench converge`: time from a Consul registration to the first request served
by the new instance, through the runtime-API path and through the reload path, in one run.

Two load balancers from the image watch one Consul: one as shipped (server changes through
the runtime API), one with ``HAPROXY_RUNTIME_API=false`` (every change reloads). A service
keeps one instance on backend A; each round registers a second instance on backend B and
polls both load balancers until B answers, then deregisters it and waits until B is gone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from devtools import images, local_images
from devtools.loadclient import percentile

ROOT = Path(__file__).resolve().parent.parent
LBS = {"runtime API": "true", "reload": "false"}


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise images.ImageError(f"timed out waiting for {what}")


def _answer(session: requests.Session, url: str) -> str:
    try:
        r = session.get(url, headers={"Host": "conv.bench.local"}, timeout=2)
    except requests.RequestException:
        return ""
    return str(r.json()["backend"]) if r.status_code == 200 else ""


def _answers(url: str, backend: str, times: int) -> Callable[[], bool]:
    def check() -> bool:
        session = requests.Session()
        return all(_answer(session, url) == backend for _ in range(times))

    return check


def _time_until(url: str, wanted: str, started: float, out: dict[str, float]) -> None:
    """Poll ``url`` until backend ``wanted`` answers; record the delay since ``started``."""
    session = requests.Session()
    deadline = started + 20
    while time.monotonic() < deadline:
        if _answer(session, url) == wanted:
            out[url] = time.monotonic() - started
            return
        time.sleep(0.002)


def main(names: images.ImageNames, rounds: int = 100, out: Callable[[str], None] = print) -> None:
    client = images.client()
    consul_image = local_images.ensure_consul_image(client, local_images.ensure_debian_base(client))
    net = client.networks.create(f"consul-lb-conv-{uuid.uuid4().hex[:6]}")
    containers: list[Any] = []

    def run(image: str, *args: Any, **kwargs: Any) -> Any:
        c = client.containers.run(image, *args, network=net.name, detach=True, **kwargs)
        containers.append(c)
        return c

    try:
        consul = run(
            consul_image, name=f"{net.name}-consul", ports={"8500/tcp": ("127.0.0.1", None)}
        )
        echo = {str(ROOT / "deploy" / "demo" / "echo.py"): {"bind": "/srv/echo.py", "mode": "ro"}}
        backends = {
            name: run(
                names.ref("consul-template"),
                ["/srv/echo.py"],
                entrypoint="python3",
                environment={"ECHO_NAME": name},
                volumes=echo,
            )
            for name in ("A", "B")
        }
        urls: dict[str, str] = {}
        for label, api in LBS.items():
            lb = run(
                names.ref("haproxy"),
                environment={
                    "HAPROXY_DOM": "bench.local",
                    "CONSUL_HTTP_ADDR": f"{net.name}-consul:8500",
                    "HAPROXY_RUNTIME_API": api,
                    "HAPROXY_RENDER_WAIT": "10ms:100ms",
                },
                ports={"8080/tcp": ("127.0.0.1", None)},
            )
            urls[label] = f"http://127.0.0.1:{images.host_port(lb, 8080)}/"
        consul_url = f"http://127.0.0.1:{images.host_port(consul, 8500)}"
        _wait(
            lambda: requests.get(f"{consul_url}/v1/status/leader", timeout=1).text != '""',
            30,
            "Consul",
        )

        def register(sid: str, backend: str) -> None:
            body = {
                "ID": sid,
                "Name": "conv",
                "Address": images.container_ip(backends[backend]),
                "Port": 8000,
                "Tags": ["HAPROXY.ENABLE=true"],
            }
            requests.put(
                f"{consul_url}/v1/agent/service/register", json=body, timeout=5
            ).raise_for_status()

        register("conv-a", "A")
        for url in urls.values():
            _wait(_answers(url, "A", 1), 60, "the first instance")
        delays: dict[str, list[float]] = {label: [] for label in LBS}
        out(f"==> {rounds} rounds: register an instance, time until it serves a request")
        for i in range(rounds):
            found: dict[str, float] = {}
            started = time.monotonic()
            register("conv-b", "B")
            pollers = [
                threading.Thread(target=_time_until, args=(u, "B", started, found))
                for u in urls.values()
            ]
            for p in pollers:
                p.start()
            for p in pollers:
                p.join()
            for label, url in urls.items():
                if url in found:
                    delays[label].append(found[url])
            requests.put(f"{consul_url}/v1/agent/service/deregister/conv-b", timeout=5)
            for url in urls.values():
                # Gone from new requests (roundrobin: two answers in a row from A).
                _wait(_answers(url, "A", 2), 30, "the instance to leave")
            if (i + 1) % 20 == 0:
                out(f"    {i + 1}/{rounds}")
        out("")
        out("| path | changes | p50 ms | p99 ms | max ms |")
        out("| --- | --- | --- | --- | --- |")
        for label, values in delays.items():
            out(
                f"| {label} | {len(values)} | {percentile(values, 0.5) * 1000:.0f} "
                f"| {percentile(values, 0.99) * 1000:.0f} | {max(values, default=0) * 1000:.0f} |"
            )
    finally:
        for c in containers:
            c.remove(force=True)
        net.remove()

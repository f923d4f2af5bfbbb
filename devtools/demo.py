"""The demo stack (deploy/demo/compose.yaml): Consul in dev mode, the HAProxy image and two
sample backends registered in Consul, on this host's ports 8080, 4444 and 8500."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools import images, local_images
from devtools.progress import Progress

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "demo" / "compose.yaml"
COMPOSE = ["docker", "compose", "-f", str(COMPOSE_FILE)]
DOMAIN = "demo.localhost"
HOST = f"web.{DOMAIN}"


def _env(names: images.ImageNames, consul: str, consul_image: str) -> dict[str, str]:
    return {
        "HAPROXY_IMAGE": names.ref("haproxy"),
        "BACKEND_IMAGE": names.ref("consul-template"),
        "HAPROXY_DOM": DOMAIN,
        "CONSUL_HTTP_ADDR": consul or "consul:8500",
        "CONSUL_IMAGE": consul_image,
    }


def up(names: images.ImageNames, consul: str, consul_image: str, steps: Progress) -> None:
    """Start the stack (without its Consul when ``consul`` names one), register the two
    backends and wait until HAProxy routes to them."""
    embedded = [] if consul else ["--profile", "embedded-consul"]
    with steps.step("starting the demo stack (docker compose up)") as step:
        command = [*COMPOSE, *embedded, "up", "-d", "--wait", "--remove-orphans"]
        step.run(command, env=_env(names, consul, consul_image))
    consul_url = f"http://{consul}" if consul else "http://127.0.0.1:8500"
    with steps.step(f"registering web-1 and web-2 in Consul at {consul_url}") as step:
        _register_backends(consul_url)
        step.status(f"waiting for HAProxy to route {HOST}")
        body = _wait_http("http://127.0.0.1:8080/", 60, host=HOST)
        try:  # deploy/demo/echo.py answers with its name
            answer = f"backend {json.loads(body)['backend']}"
        except (ValueError, KeyError, TypeError):
            answer = body.decode(errors="replace").strip()[:60]
        step.done = f"HAProxy answers for {HOST} ({answer})"


def down(names: images.ImageNames, steps: Progress) -> None:
    """Remove the stack. Nothing is pulled or built: compose takes the images as names."""
    consul_image = os.environ.get("CONSUL_IMAGE", local_images.LOCAL_CONSUL)
    with steps.step("stopping the demo stack") as step:
        command = [*COMPOSE, "--profile", "embedded-consul", "down", "--remove-orphans"]
        step.run([*command, "--timeout", "5"], env=_env(names, "", consul_image))


def print_guide() -> None:
    stats = "http://127.0.0.1:4444"
    print("==> try it:")
    print(f"    curl -H 'Host: {HOST}' http://127.0.0.1:8080/")
    print("==> where to look (all on the stats port):")
    print(f"    stats page:   {stats}/            (CSV: {stats}/;csv)")
    print(f"    metrics:      {stats}/metrics     (Prometheus: the runtime's and HAProxy's)")
    print(f"    state:        {stats}/_consul_lb/state   (published and skipped services)")
    print(f"    config:       {stats}/_haproxy_getconfig (the haproxy.cfg HAProxy runs)")
    print(f"    health:       {stats}/_haproxy_health_check")
    print("    logs:         docker logs -f consul-lb-demo-haproxy-1")
    print("==> stop it:      ./dev demo --down")


def _consul_put(base_url: str, path: str, body: dict[str, object]) -> None:
    req = urllib.request.Request(f"{base_url}{path}", data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=5):
        pass


def _wait_http(url: str, timeout: float, host: str | None = None) -> bytes:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        req = urllib.request.Request(url, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                body: bytes = resp.read()
                return body
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})")


def _register_backends(consul_url: str) -> None:
    _wait_http(f"{consul_url}/v1/status/leader", 30)
    for name in ("web-1", "web-2"):
        _consul_put(
            consul_url,
            "/v1/agent/service/register",
            {
                "ID": name,
                "Name": "web",
                "Address": name,
                "Port": 8000,
                "Tags": ["HAPROXY.ENABLE=true"],
                "Check": {"HTTP": f"http://{name}:8000/", "Interval": "2s"},
            },
        )

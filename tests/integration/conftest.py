"""Integration fixtures: one real stack (Consul, the HAProxy image, sample backends) per
test session through pytest-docker, and a Consul client that cleans up after each test."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import websockets
from pytest_docker.plugin import Services

from devtools import images, local_images

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOMAIN = "test.local"
# Given to the load balancers of the stack: it must appear in no log, endpoint or metric.
CONSUL_TOKEN = f"token-{uuid.uuid4()}"
VOLUMES = {"haproxy": "state-seamless", "haproxy-syndrop": "state-syndrop"}


def image_names() -> images.ImageNames:
    return images.ImageNames(
        os.environ.get("CONSUL_LB_IMAGE_NAMESPACE", "consul-lb"),
        os.environ.get("CONSUL_LB_IMAGE_TAG", "latest"),
    )


def require_images(client: docker.DockerClient, *refs: str) -> None:
    for ref in refs:
        if not images.image_exists(client, ref):
            pytest.fail(f"{ref} is missing: run `invoke test` (it builds the images)")


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    client = images.client()
    names = image_names()
    require_images(client, names.ref("haproxy"), names.ref("consul-template"))
    os.environ["TEST_CONSUL_TOKEN"] = CONSUL_TOKEN
    # The WebSocket test backend runs the websockets package of this environment (pure
    # Python: its optional C speed-up for another Python is skipped on import).
    os.environ["WEBSOCKETS_PACKAGE"] = str(Path(websockets.__file__).parent)
    os.environ["HAPROXY_IMAGE"] = names.ref("haproxy")
    os.environ["BACKEND_IMAGE"] = names.ref("consul-template")
    os.environ["CONSUL_IMAGE"] = local_images.ensure_consul_image(
        client, local_images.ensure_debian_base(client)
    )
    return str(HERE / "compose.yaml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"consul-lb-it-{os.getpid()}"


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans --timeout 5"]


def wait_until(
    check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except requests.RequestException as exc:
            last = exc  # shown on timeout; not a success
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")


class Stack:
    """The running test stack: addresses of its parts and helpers to drive Consul."""

    def __init__(self, services: Services, project: str) -> None:
        self.project = project
        self.services = services
        self.consul = f"http://127.0.0.1:{services.port_for('consul', 8500)}"
        self.http = f"http://127.0.0.1:{services.port_for('haproxy', 8080)}"
        self.stats = f"http://127.0.0.1:{services.port_for('haproxy', 4444)}"
        self.tcp_port = services.port_for("haproxy", 9000)
        self.docker = docker.from_env()
        self.registered: list[str] = []

    def port(self, service: str, container_port: int) -> int:
        """The 127.0.0.1 port a container port of the stack is published on."""
        return int(self.services.port_for(service, container_port))

    def container(self, service: str) -> Any:
        return self.docker.containers.get(f"{self.project}-{service}-1")

    def ip(self, service: str) -> str:
        return images.container_ip(self.container(service))

    def register(
        self,
        service_id: str,
        name: str,
        backend: str,
        tags: list[str],
        port: int = 8000,
        check: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "ID": service_id,
            "Name": name,
            "Address": self.ip(backend),
            "Port": port,
            "Tags": tags,
        }
        if check:
            body["Check"] = check
        body.update(extra or {})
        r = requests.put(f"{self.consul}/v1/agent/service/register", json=body, timeout=5)
        r.raise_for_status()
        self.registered.append(service_id)

    def deregister(self, service_id: str) -> None:
        r = requests.put(f"{self.consul}/v1/agent/service/deregister/{service_id}", timeout=5)
        r.raise_for_status()

    def ttl(self, service_id: str, status: str) -> None:
        """Set a TTL check's status: pass, warn or fail."""
        r = requests.put(f"{self.consul}/v1/agent/check/{status}/service:{service_id}", timeout=5)
        r.raise_for_status()

    def get(self, host: str, path: str = "/") -> requests.Response:
        return requests.get(f"{self.http}{path}", headers={"Host": host}, timeout=5)

    def backend_of(self, host: str) -> str | None:
        """Which sample backend answered for ``host`` (None if HAProxy did not route)."""
        r = self.get(host)
        if r.status_code != 200:
            return None
        return str(r.json()["backend"])

    def state(self, service: str = "haproxy") -> dict[str, Any]:
        """The runtime's state.json, read from its named volume."""
        volume = self.docker.volumes.get(f"{self.project}_{VOLUMES[service]}")
        path = Path(volume.attrs["Mountpoint"]) / "state.json"
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return state

    def settled(self, *services: str, service: str = "haproxy") -> dict[str, Any]:
        """The state once the load balancer publishes ``services`` (and maybe more): a change is
        counted (reloads, runtime-API changes) when its apply ends, which with a seamless
        reload is after the new worker already answers; a count read as soon as traffic
        flows may still miss the change that made it flow."""
        found: dict[str, Any] = {}

        def published() -> bool:
            found.update(self.state(service))
            return set(services) <= set(found.get("services", []))

        wait_until(published, what=f"{service} publishing {sorted(services)}")
        return found

    def config_of(self, backend: str) -> str:
        """The ``backend <name>`` section HAProxy runs (from /_haproxy_getconfig)."""
        text = requests.get(f"{self.stats}/_haproxy_getconfig", timeout=5).text
        _, found, rest = text.partition(f"\nbackend {backend}\n")
        return rest.split("\n\n")[0] if found else ""

    def logs(self, service: str = "haproxy") -> str:
        return str(self.container(service).logs().decode(errors="replace"))


@pytest.fixture(scope="session")
def stack_session(docker_services: Services, docker_compose_project_name: str) -> Stack:
    stack = Stack(docker_services, docker_compose_project_name)
    wait_until(
        lambda: requests.get(f"{stack.stats}/_haproxy_health_check", timeout=2).ok,
        timeout=60,
        what="HAProxy's health URI",
    )
    return stack


@pytest.fixture
def stack(stack_session: Stack) -> Iterator[Stack]:
    yield stack_session
    for service_id in stack_session.registered:
        stack_session.deregister(service_id)
    stack_session.registered.clear()


def start_load(stack: Stack, target: str, host: str, mode: str, concurrency: int) -> Any:
    return stack.docker.containers.run(
        image_names().ref("consul-template"),
        [
            "/srv/loadclient.py",
            f"--host={target}",
            f"--host-header={host}",
            f"--mode={mode}",
            f"--concurrency={concurrency}",
            "--duration=240",
            "--pause=0.002",
            # A SYN dropped three times in a row waits 1 + 2 + 4 s before it gets through:
            # slow, not failed.
            "--timeout=30",
        ],
        entrypoint="python3",
        network=f"{stack.project}_default",
        volumes={
            str(ROOT / "devtools" / "loadclient.py"): {"bind": "/srv/loadclient.py", "mode": "ro"}
        },
        detach=True,
        labels={"consul-lb-test": stack.project},
    )


def finish_load(container: Any) -> dict[str, Any]:
    container.stop(timeout=30)
    try:
        out = container.logs(stdout=True, stderr=False).decode().strip().splitlines()
    finally:
        container.remove(force=True)
    result: dict[str, Any] = json.loads(out[-1])
    return result


def run_to_exit(image: str, environment: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``image`` until it exits (30 s at most); its exit code and its output."""
    container = docker.from_env().containers.run(image, environment=environment, detach=True)
    try:
        result = container.wait(timeout=30)
        return int(result["StatusCode"]), str(container.logs().decode())
    finally:
        container.remove(force=True)

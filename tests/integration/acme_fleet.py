"""The ACME integration stack (tests/integration/test_acme.py): Pebble, from Debian
trixie's package, on a network of its own with a Consul, a sample backend and two load
balancers. Every service host resolves to both load balancers (Docker network aliases),
so Pebble's HTTP-01 validation reaches either.

Pebble issues certificates valid for ``VALIDITY`` seconds: each is renewed halfway
through its life (the renewal rule for certificates shorter-lived than twice
``HAPROXY_ACME_RENEW_BEFORE``), so a renewal happens during the tests by itself. It
validates at once (``PEBBLE_VA_NOSLEEP``) and rejects no valid nonce; challenges are
really validated (``PEBBLE_VA_ALWAYS_VALID`` is not used). Pebble refuses names under
``blocked.test`` (its ``domainBlocklist``).

The tests kill and restart containers of this stack, so it is not the shared
pytest-docker stack: it has its own network and containers, and removes them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from devtools import images, local_images, pebble
from tests.integration.conftest import image_names, require_images, wait_until

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


@contextlib.contextmanager
def fleet_stack() -> Iterator[Fleet]:
    """The stack, removed on the way out however it ends (every container labelled with
    its network's name, even one whose start failed)."""
    client = docker.from_env()
    names = image_names()
    require_images(client, names.ref("haproxy"), names.ref("consul-template"))
    try:
        consul_image = local_images.present_consul_image(client)
        pebble_image = local_images.ensure_pebble_image(
            client, local_images.ensure_debian_base(client)
        )
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
            command=local_images.consul_dev_command(),
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

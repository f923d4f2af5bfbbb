"""A real HAProxy on loopback for the fast tier: the project's own applier, renderer and
supervisor around Debian's ``haproxy`` binary, with small HTTP backends in-process.

The images run HAProxy 3.0; the host's binary may be older (bookworm: 2.6). What is
tested here (runtime API commands, server state across a ``-sf`` reload, haproxy -c)
behaves the same in both; the master-worker reload is tested in the image.
"""

from __future__ import annotations

import csv
import http.client
import io
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.process import make
from consul_lb.manager.applier import Applier
from consul_lb.render import Renderer
from consul_lb.settings import Settings

ON = "HAPROXY.ENABLE=true"
HAPROXY = shutil.which("haproxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """An HTTP server answering its own name, on a free loopback port."""

    def __init__(self, name: str) -> None:
        self.name = name
        body = name.encode()
        self.held = threading.Event()  # a request is being held
        self.release: threading.Event | None = None
        self.echo_path = False  # answer "<name> <path>" instead of "<name>"
        self.failing_paths: set[str] = set()  # answered 500 (a failing HTTP check)
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                release = backend.release
                if release is not None:
                    backend.release = None
                    backend.held.set()
                    release.wait(30)
                text = f"{name} {self.path}".encode() if backend.echo_path else body
                status = 500 if self.path in backend.failing_paths else 200
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def hold(self) -> threading.Event:
        """The next request stays open until the returned event is set."""
        self.release = threading.Event()
        self.held.clear()
        return self.release

    def close(self) -> None:
        if self.release is not None:
            self.release.set()
        self.server.shutdown()
        self.server.server_close()


def settings_for(state_dir: Path, **overrides: Any) -> Settings:
    return replace(
        Settings(
            domain="example.com",
            http_port=free_port(),
            stats_port=free_port(),
            runtime_port=free_port(),
            state_dir=state_dir,
            reload_strategy="naive",
            server_drain_timeout=2.0,
            render_wait_min=0.01,
            render_wait_max=0.05,
            drain_seconds=0.1,
        ),
        **overrides,
    )


@dataclass
class Stack:
    settings: Settings
    applier: Applier
    backends: dict[str, Backend] = field(default_factory=dict)

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            self.backends[name] = Backend(name)
        return self.backends[name]

    def instance(
        self, service_id: str, backend: str | None = None, created: int = 1, **kw: Any
    ) -> Instance:
        tags = kw.pop("tags", (ON,))
        return Instance(
            "node-1",
            service_id,
            "127.0.0.1",
            self.backend(backend or service_id).port,
            tuple(sorted(tags)),
            create_index=created,
            **kw,
        )

    def get(self, host: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.settings.http_port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def servers(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show servers state`` of the running HAProxy, by (backend, server)."""
        lines = self.applier.haproxy.admin("show servers state").splitlines()
        fields = lines[1][2:].split()
        rows = [dict(zip(fields, ln.split(), strict=True)) for ln in lines[2:] if ln.strip()]
        return {(r["be_name"], r["srv_name"]): r for r in rows}

    def sessions(self) -> dict[tuple[str, str], int]:
        text = self.applier.haproxy.admin("show stat -1 4 -1").lstrip("# ")
        return {
            (r["pxname"], r["svname"]): int(r["scur"] or 0)
            for r in csv.DictReader(io.StringIO(text))
        }


def catalog(*instances: Instance, service: str = "web") -> Catalog:
    return Catalog.build({service: [ON]}, {service: list(instances)})


def services(found: dict[str, list[Instance]]) -> Catalog:
    return Catalog.build({n: [ON] for n in found}, found)


def make_stack(tmp_path: Path, template_dirs: tuple[Path, ...] = (), **overrides: Any) -> Stack:
    settings = settings_for(tmp_path, templates=template_dirs, **overrides)
    paths = Paths(tmp_path)
    haproxy = make(settings.reload_strategy, paths)
    renderer = Renderer(settings, paths.template_paths(), settings.templates)
    return Stack(settings, Applier(settings, paths, haproxy, renderer))


def stop(stack: Stack) -> None:
    proc = stack.applier.haproxy
    proc.stopping = True
    for p in [*getattr(proc, "old", []), proc.proc]:
        if p is not None and p.running():
            p.stop(timeout=5)
    for b in stack.backends.values():
        b.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if HAPROXY is None:
        # Not a skip: these tests are what shows HAProxy's own behaviour in the fast tier.
        pytest.fail("no haproxy binary: run ./dev, which installs Debian's haproxy")
    s = make_stack(tmp_path)
    yield s
    stop(s)

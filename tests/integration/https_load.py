"""HTTPS under load, and HAProxy's worker pid: what the TLS and ACME integration tests
measure a certificate change with (no failed request, no reload)."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


def haproxy_worker_pid(container: Any) -> str:
    """The HAProxy worker's pid in a load balancer container (``show info`` on the admin
    socket): a reload changes it."""
    script = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        "s.connect('/var/lib/consul-lb/admin.sock'); s.sendall(b'show info\\n'); "
        "print(s.makefile().read())"
    )
    out = container.exec_run(["python3", "-c", script]).output.decode()
    return str(next(ln.split(":")[1].strip() for ln in out.splitlines() if ln.startswith("Pid:")))


class HttpsTarget(Protocol):
    ca_file: Path  # what the client trusts
    port: int  # the load balancer's https port on 127.0.0.1


@dataclass
class HttpsLoad:
    """HTTPS requests, each on a new connection (a new handshake), from 2 threads, until
    stopped (at most 120 s): what failed and which certificate each handshake got."""

    target: HttpsTarget
    host: str
    failures: list[str] = field(default_factory=list)
    seen: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        context = ssl.create_default_context(cafile=str(self.target.ca_file))
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.target.port), timeout=10) as raw,
                    context.wrap_socket(raw, server_hostname=self.host) as conn,
                ):
                    der = conn.getpeercert(binary_form=True) or b""
                    conn.sendall(
                        f"GET / HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode()
                    )
                    reply = conn.makefile("rb").read()
                if not reply.startswith(b"HTTP/1.1 200"):
                    self.failures.append(reply[:80].decode(errors="replace"))
                self.seen.append((time.monotonic(), hashlib.sha256(der).hexdigest()))
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(repr(exc))

    def saw(self, fingerprint: str) -> bool:
        return any(f == fingerprint for _, f in self.seen)

    def __enter__(self) -> HttpsLoad:
        self.threads = [threading.Thread(target=self.run) for _ in range(2)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

"""Pebble, Let's Encrypt's ACME test server (Debian's ``pebble`` package), for the tests:
its configuration, a certificate for its own listener (signed by a CA the load
balancers trust through ``HAPROXY_ACME_CA_FILE``), and, for the fast tier, Pebble and its
mock DNS server (``pebble-challtestsrv``) as local processes on 127.0.0.1.

Pebble's behaviours the tests choose, and why:
- ``PEBBLE_VA_NOSLEEP=1``: it validates at once instead of after 0 to 15 s;
- ``PEBBLE_WFE_NONCEREJECT=0``: it rejects no valid nonce (5 % by default); the acme
  library retries a rejected one once, and a test counting orders must not see a second
  one made after a retry;
- challenges are validated for real (``PEBBLE_VA_ALWAYS_VALID`` is not used).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.certs import Ca

ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}


def config(http_port: int, listen: int = 14000, management: int = 15000, validity: int = 0) -> str:
    """Pebble's JSON configuration. ``http_port``: where it connects for HTTP-01 (the load
    balancer's http port); ``validity``: seconds its certificates are valid (0: its
    default, five years), ``certificateValidityPeriod`` from Pebble 2.5 on."""
    body: dict[str, Any] = {
        "listenAddress": f"0.0.0.0:{listen}",
        "managementListenAddress": f"0.0.0.0:{management}",
        "certificate": "/etc/pebble/cert.pem",
        "privateKey": "/etc/pebble/key.pem",
        "httpPort": http_port,
        "tlsPort": 5001,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity:
        body["certificateValidityPeriod"] = validity
    return json.dumps({"pebble": body}, indent=2)


def write_files(directory: Path, *names: str, **kwargs: Any) -> Path:
    """``config.json``, ``cert.pem`` and ``key.pem`` for a Pebble answering at ``names``,
    and ``ca.pem``, which signed its certificate (what clients trust). Paths in the
    configuration are ``/etc/pebble/...``: mount ``directory`` there, or rewrite them."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = Ca("consul-lb test CA for Pebble's listener")
    leaf = ca.issue(*names, ips=("127.0.0.1",))
    (directory / "cert.pem").write_bytes(leaf.cert_pem + ca.pem)
    (directory / "key.pem").write_bytes(leaf.key_pem)
    (directory / "ca.pem").write_bytes(ca.pem)
    (directory / "config.json").write_text(config(**kwargs))
    for path in directory.iterdir():
        path.chmod(0o644)  # read by Pebble's and the load balancers' own users
    directory.chmod(0o755)
    return directory / "ca.pem"


@dataclass
class LocalPebble:
    """Pebble and challtestsrv as processes on 127.0.0.1; every host name resolves to
    127.0.0.1 (challtestsrv's default answer), so HTTP-01 reaches ``http_port`` here."""

    directory: Path
    http_port: int
    listen: int
    management: int
    dns: int
    blocklist: tuple[str, ...] = ()
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listen}/dir"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def start(self) -> None:
        binary = shutil.which("pebble")
        if binary is None:
            raise FileNotFoundError("pebble is not installed (./dev installs Debian's package)")
        write_files(self.directory, "localhost", http_port=self.http_port)
        conf = json.loads((self.directory / "config.json").read_text())
        conf["pebble"].update(
            certificate=str(self.directory / "cert.pem"),
            privateKey=str(self.directory / "key.pem"),
            listenAddress=f"127.0.0.1:{self.listen}",
            managementListenAddress=f"127.0.0.1:{self.management}",
            domainBlocklist=list(self.blocklist),
        )
        (self.directory / "config.json").write_text(json.dumps(conf))
        log = (self.directory / "pebble.log").open("ab")
        no = ""  # challtestsrv: an empty address turns a challenge server off
        self.processes.append(
            subprocess.Popen(
                [
                    "pebble-challtestsrv",
                    "-dns01",
                    f"127.0.0.1:{self.dns}",
                    "-http01",
                    no,
                    "-https01",
                    no,
                    "-tlsalpn01",
                    no,
                    "-management",
                    "127.0.0.1:0",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    no,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        self.processes.append(
            subprocess.Popen(
                [
                    binary,
                    "-config",
                    str(self.directory / "config.json"),
                    "-dnsserver",
                    f"127.0.0.1:{self.dns}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ENV},
            )
        )
        if not (wait_listening(self.listen) and wait_listening(self.management)):
            self.stop()
            raise RuntimeError(f"pebble did not start: {self.log()[-500:]}")

    def root(self) -> bytes:
        """The root its certificates chain to (Pebble makes a new one at each start)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        # http.client, not urllib: no proxy variable may send this elsewhere.
        conn = http.client.HTTPSConnection("127.0.0.1", self.management, context=context)
        try:
            conn.request("GET", "/roots/0")
            return conn.getresponse().read()
        finally:
            conn.close()

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
            proc.wait(10)

    def log(self) -> str:
        return (self.directory / "pebble.log").read_text(errors="replace")


def wait_listening(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False

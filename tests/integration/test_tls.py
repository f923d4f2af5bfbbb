"""TLS at the edge (issue 12) with real TLS clients (curl, Python's ssl) against the image:
certificates from the directory and from KV chosen by SNI, HTTP/2, the default
certificate, redirect and HSTS, forwarded headers, rotation under load without a reload,
bad bundles, TLS to an instance that serves TLS itself."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.certs import Ca, Leaf
from tests.integration.conftest import Stack, wait_until
from tests.integration.https_load import HttpsLoad as Load
from tests.integration.https_load import haproxy_worker_pid

pytestmark = pytest.mark.integration

PREFIX = "tls/certs/"
CA = Ca()
DEFAULT = CA.issue("default.test.local")


class Tls:
    """The stack's https side: its certificate directory (a named volume), KV, clients."""

    def __init__(self, stack: Stack, tmp: Path) -> None:
        self.stack = stack
        volume = stack.docker.volumes.get(f"{stack.project}_certs")
        self.dir = Path(volume.attrs["Mountpoint"])
        self.port = stack.port("haproxy", 8443)
        self.ca_file = tmp / "ca.pem"
        self.ca_file.write_bytes(CA.pem)

    # -- sources ------------------------------------------------------------------------
    def write(self, name: str, data: bytes) -> None:
        tmp = self.dir / f".{name}.tmp"  # written whole, then renamed: never read half
        tmp.write_bytes(data)
        tmp.rename(self.dir / name)

    def remove(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    def put(self, key: str, data: bytes) -> None:
        requests.put(
            f"{self.stack.consul}/v1/kv/{PREFIX}{key}", data=data, timeout=5
        ).raise_for_status()

    def delete(self, key: str) -> None:
        requests.delete(f"{self.stack.consul}/v1/kv/{PREFIX}{key}", timeout=5).raise_for_status()

    # -- clients --------------------------------------------------------------------------
    def handshake(self, sni: str | None) -> str:
        """SHA-256 of the certificate served to a client sending ``sni``."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()

    def curl(self, host: str, path: str = "/", *options: str, https: bool = True) -> dict[str, Any]:
        """curl with SNI (``--resolve``) and the test CA: status (0: no answer), HTTP
        version, headers (lower-case names), body."""
        port = self.port if https else self.stack.port("haproxy", 8080)
        url = f"{'https' if https else 'http'}://{host}:{port}{path}"
        with tempfile.TemporaryDirectory() as tmp:
            head, body = Path(tmp, "head"), Path(tmp, "body")
            proc = subprocess.run(
                [
                    *("curl", "-sS", "--max-time", "10", "--cacert", str(self.ca_file)),
                    *("--resolve", f"{host}:{port}:127.0.0.1", "-D", str(head), "-o", str(body)),
                    *("-w", "%{response_code} %{http_version}", *options, url),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:  # e.g. the certificate is not there yet: no answer
                return {"status": 0, "error": proc.stderr.strip()}
            status, version = proc.stdout.split()
            lines = head.read_text().splitlines()[1:]
            return {
                "status": int(status),
                "version": version,
                "headers": {
                    k.strip().lower(): v.strip()
                    for k, sep, v in (ln.partition(":") for ln in lines)
                    if sep
                },
                "body": body.read_text(),
            }

    def answer(
        self, host: str, path: str = "/", *options: str, https: bool = True, status: int = 200
    ) -> dict[str, Any]:
        """``curl`` until it gets ``status`` (the change may still be on its way)."""

        def check() -> dict[str, Any] | None:
            found = self.curl(host, path, *options, https=https)
            return found if found["status"] == status else None

        result: dict[str, Any] = wait_until(check, what=f"{status} from {host}{path}")
        return result

    def worker(self) -> str:
        """The HAProxy worker's pid: a reload changes it."""
        return haproxy_worker_pid(self.stack.container("haproxy"))

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.stack.state().get("tls") or {}
        return state


@pytest.fixture(scope="module")
def tls_session(stack_session: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    tls = Tls(stack_session, tmp_path_factory.mktemp("tls"))
    # The named default (HAPROXY_TLS_DEFAULT_CERT) first: the https frontend is bound
    # (one reload), and every later change goes through the runtime API.
    tls.write("default.pem", DEFAULT.bundle)
    wait_until(lambda: tls.state().get("https_bound"), timeout=30, what="the https frontend")
    yield tls
    tls.remove("default.pem")


@pytest.fixture
def tls(tls_session: Tls, stack: Stack) -> Iterator[Tls]:
    yield tls_session
    for path in tls_session.dir.iterdir():
        if path.name != "default.pem":
            path.unlink()
    keys = requests.get(f"{stack.consul}/v1/kv/{PREFIX}?keys", timeout=5)
    for key in keys.json() if keys.ok else []:
        requests.delete(f"{stack.consul}/v1/kv/{key}", timeout=5)


def serves(tls: Tls, sni: str, leaf: Leaf) -> bool:
    return tls.handshake(sni) == leaf.fingerprint


def test_sni_picks_each_certificate_http2_and_the_default(tls: Tls, stack: Stack) -> None:
    www = CA.issue("www.test.local")
    wildcard = CA.issue("*.test.local")
    tls.write("www.pem", www.bundle)  # from the directory
    tls.put("wildcard", wildcard.bundle)  # from KV
    stack.register("www-1", "www", "web-1", ["HAPROXY.ENABLE=true"])
    stack.register("api-1", "api", "web-2", ["HAPROXY.ENABLE=true"])
    wait_until(lambda: serves(tls, "api.test.local", wildcard), what="the wildcard from KV")
    wait_until(lambda: serves(tls, "www.test.local", www), what="www from the directory")
    assert tls.handshake(None) == DEFAULT.fingerprint  # no SNI: the default certificate
    assert tls.handshake("nothing.example.org") == DEFAULT.fingerprint

    www_answer = tls.answer("www.test.local", "/", "--http2")
    assert www_answer["version"] == "2"
    assert json.loads(www_answer["body"])["backend"] == "web-1"
    api = tls.answer("api.test.local", "/", "--http1.1")
    assert api["version"] == "1.1"
    assert json.loads(api["body"])["backend"] == "web-2"


def test_forwarded_headers_say_what_the_load_balancer_saw(tls: Tls, stack: Stack) -> None:
    tls.write("www.pem", CA.issue("www.test.local").bundle)
    stack.register("www-1", "www", "web-1", ["HAPROXY.ENABLE=true"])
    forged = ("-H", "X-Forwarded-Proto: https", "-H", "X-Forwarded-For: 6.6.6.6")
    for https, proto in ((True, "https"), (False, "http")):
        answer = tls.answer("www.test.local", "/", *forged, https=https)
        headers = {k.lower(): v for k, v in json.loads(answer["body"])["headers"].items()}
        assert headers["x-forwarded-proto"] == proto
        assert "6.6.6.6" not in headers["x-forwarded-for"]


def test_redirect_and_hsts_per_service_and_untagged_services_unchanged(
    tls: Tls, stack: Stack
) -> None:
    tls.write("wild.pem", CA.issue("*.test.local").bundle)
    tags = [
        "HAPROXY.ENABLE=true",
        "HAPROXY.FRONTEND.REDIRECT_HTTPS=true",
        "HAPROXY.FRONTEND.HSTS=600",
    ]
    stack.register("secure-1", "secure", "web-1", tags)
    stack.register("plain-1", "plain", "web-2", ["HAPROXY.ENABLE=true"])
    redirect = tls.answer("secure.test.local", "/a/b?c=1", https=False, status=308)
    # Same host and path; HAPROXY_HTTPS_PORT (8443 in the container) is not 443.
    assert redirect["headers"]["location"] == "https://secure.test.local:8443/a/b?c=1"
    secure = tls.answer("secure.test.local", "/a/b?c=1")
    assert secure["headers"]["strict-transport-security"] == "max-age=600"
    plain = tls.answer("plain.test.local", "/", https=False)
    assert json.loads(plain["body"])["backend"] == "web-2"
    assert "strict-transport-security" not in tls.answer("plain.test.local")["headers"]


def test_rotation_addition_and_removal_under_load_without_a_reload(tls: Tls, stack: Stack) -> None:
    first = CA.issue("rot.test.local")
    tls.put("rot", first.bundle)
    gone = CA.issue("gone.test.local")
    tls.write("gone.pem", gone.bundle)
    stack.register("rot-1", "rot", "web-3", ["HAPROXY.ENABLE=true"])
    wait_until(lambda: serves(tls, "rot.test.local", first), what="the first certificate")
    wait_until(lambda: serves(tls, "gone.test.local", gone), what="gone.pem")
    tls.answer("rot.test.local")
    reloads = stack.settled("rot")["reloads"]
    pid = tls.worker()
    delays = []
    with Load(tls, "rot.test.local") as load:
        for _ in range(3):
            leaf = CA.issue("rot.test.local")
            put_at = time.monotonic()
            tls.put("rot", leaf.bundle)
            wait_until(partial(load.saw, leaf.fingerprint), what="the rotated certificate")
            delays.append(next(t for t, f in load.seen if f == leaf.fingerprint) - put_at)
        added = CA.issue("added.test.local")
        tls.put("added", added.bundle)
        tls.remove("gone.pem")
        wait_until(lambda: serves(tls, "added.test.local", added), what="the added certificate")
        wait_until(lambda: tls.handshake("gone.test.local") == DEFAULT.fingerprint, what="removal")
        handshakes = len(load.seen)
    print(
        f"rotation: {handshakes} handshakes, {len(load.failures)} failed, "
        f"new certificate after {', '.join(f'{d * 1000:.0f} ms' for d in delays)}"
    )
    assert load.failures == []
    assert handshakes > 0
    assert (tls.worker(), stack.state()["reloads"]) == (pid, reloads)


def test_bad_bundles_are_skipped_with_reasons_and_the_rest_is_served(
    tls: Tls, stack: Stack
) -> None:
    good = CA.issue("good.test.local")
    tls.write("good.pem", good.bundle)
    tls.write("garbage.pem", b"this is not a certificate\n")
    tls.put("mismatch", CA.issue("m.test.local").cert_pem + good.key_pem)
    skipped = wait_until(
        lambda: (
            {s["name"]: s for s in tls.state().get("skipped", [])}.keys()
            >= {"garbage.pem", "mismatch"}
            and {s["name"]: s["reason"] for s in tls.state()["skipped"]}
        ),
        what="both skipped",
    )
    assert skipped["garbage.pem"].startswith("no PEM block")
    assert skipped["mismatch"] == "the private key does not match the certificate"
    assert serves(tls, "good.test.local", good)
    logs = stack.logs()
    assert logs.count("skipping certificate 'garbage.pem'") == 1
    assert logs.count("skipping certificate 'mismatch'") == 1
    key_line = good.key_pem.decode().splitlines()[1]
    assert key_line not in logs
    state = requests.get(f"{stack.stats}/_consul_lb/state", timeout=5).text
    metrics = requests.get(f"{stack.stats}/metrics", timeout=5).text
    assert key_line not in state and key_line not in metrics
    assert 'consul_lb_certificate_expiry_timestamp_seconds{name="good.pem"}' in metrics


def test_tls_to_an_instance_that_serves_tls(tls: Tls, stack: Stack) -> None:
    stack.register(
        "tlsb-1", "tlsb", "web-tls", ["HAPROXY.ENABLE=true", "HAPROXY.BACKEND.TLS=true"], port=8443
    )
    answer = wait_until(lambda: stack.backend_of("tlsb.test.local"), what="the TLS instance")
    assert answer == "web-tls"
    assert (
        stack.logs().count(
            "service 'tlsb': HAPROXY.BACKEND.TLS=true without HAPROXY_BACKEND_CA_FILE"
        )
        == 1
    )

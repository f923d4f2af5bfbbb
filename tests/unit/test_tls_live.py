"""Certificates served by a real HAProxy (Debian's, tests/unit/local_haproxy.py) under the
runtime's loop, from a directory and from (the in-process) Consul KV: SNI, ALPN, the
default certificate, additions, rotations and removals through the runtime API without a
reload, bad bundles skipped with their reasons, what is on disk, the metrics."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consul_lb.observe.metrics import exposition
from consul_lb.tls.settings import TlsSettings

from devtools.certs import Ca
from tests.unit.fake_consul import FakeConsul
from tests.unit.local_haproxy import free_port
from tests.unit.test_runner import Harness, consul, eventually

CA = Ca()
__all__ = ["consul"]  # the runner tests' in-process Consul: a fixture, used by name
PREFIX = "tls/certs/"


class TlsHarness(Harness):
    def __init__(self, tmp_path: Path, consul: FakeConsul, **tls: Any) -> None:
        self.cert_dir = tmp_path / "certs-in"
        self.cert_dir.mkdir()
        self.https_port = free_port()
        settings = TlsSettings(
            https_port=self.https_port, cert_dir=self.cert_dir, cert_kv=PREFIX, **tls
        )
        super().__init__(tmp_path / "state", consul, tls=settings)
        self.ca_file = tmp_path / "ca.pem"
        self.ca_file.write_bytes(CA.pem)

    def handshake(self, sni: str | None) -> tuple[str, str | None]:
        """(SHA-256 of the certificate served, the ALPN protocol agreed) for ``sni``."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False  # no SNI: the default certificate, any name
        context.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest(), tls.selected_alpn_protocol()

    def served(self, sni: str | None) -> str:
        return self.handshake(sni)[0]

    def reloads(self) -> int:
        return self.runner.applier.counters.reloads

    def tls_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.runner.report.state()["tls"]
        return state


@pytest.fixture
def lb(tmp_path: Path, consul: FakeConsul) -> Iterator[TlsHarness]:
    h = TlsHarness(tmp_path, consul)
    yield h
    h.stop()


WWW = CA.issue("www.example.com")
WILD = CA.issue("*.apps.example.com")


def test_certificates_from_the_directory_are_served_from_the_start(lb: TlsHarness) -> None:
    (lb.cert_dir / "www.pem").write_bytes(WWW.bundle)
    (lb.cert_dir / "wild.pem").write_bytes(WILD.bundle)
    lb.register("web", "web-1")
    lb.start_in_background()
    assert lb.handshake("www.example.com") == (WWW.fingerprint, "h2")
    assert lb.served("api.apps.example.com") == WILD.fingerprint
    # Without SNI, or for a name no certificate has: the default, first by name.
    assert lb.served(None) == WILD.fingerprint
    assert lb.served("unknown.example.org") == WILD.fingerprint
    state = lb.tls_state()
    assert state["https_bound"] is True and state["default"] == "wild.pem"
    # What HAProxy reads: keys mode 600 in a mode-700 directory; the default listed first.
    certs = lb.settings.state_dir / "tls" / "certs"
    assert stat.S_IMODE(os.stat(certs).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in certs.iterdir()} == {0o600}
    listed = (lb.settings.state_dir / "tls" / "certs.list").read_text().splitlines()
    assert listed == [f"{certs}/wild.pem", f"{certs}/www.pem"]


def test_kv_certificates_are_added_rotated_and_removed_without_a_reload(
    lb: TlsHarness, consul: FakeConsul
) -> None:
    (lb.cert_dir / "www.pem").write_bytes(WWW.bundle)
    lb.start_in_background()
    lb.settled(https=True)
    pid, reloads = lb.runner.haproxy.pid, lb.reloads()

    # "x-wild" sorts after "www.pem": the default stays (another default would reload).
    consul.put_key(PREFIX + "x-wild", WILD.bundle)
    eventually(lambda: lb.served("a.apps.example.com") == WILD.fingerprint, what="added")
    rotated = CA.issue("*.apps.example.com")
    consul.put_key(PREFIX + "x-wild", rotated.bundle)
    eventually(lambda: lb.served("a.apps.example.com") == rotated.fingerprint, what="rotated")
    consul.delete_key(PREFIX + "x-wild")
    eventually(lambda: lb.served("a.apps.example.com") == WWW.fingerprint, what="removed")

    assert (lb.runner.haproxy.pid, lb.reloads()) == (pid, reloads)
    assert lb.runner.tls.commands.commands > 0
    assert not (lb.settings.state_dir / "tls" / "certs" / "x-wild").exists()


def test_bad_bundles_are_skipped_with_their_reasons(
    lb: TlsHarness, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    (lb.cert_dir / "www.pem").write_bytes(WWW.bundle)
    (lb.cert_dir / "garbage.pem").write_bytes(b"not a certificate")
    consul.put_key(PREFIX + "mismatch", WILD.cert_pem + WWW.key_pem)
    caplog.set_level(logging.WARNING, logger="tls")
    lb.start_in_background()
    skipped = eventually(lambda: len(lb.tls_state()["skipped"]) == 2 and lb.tls_state()["skipped"])
    assert skipped == [
        {
            "name": "garbage.pem",
            "source": "dir",
            "reason": "no PEM block: expected a certificate, its chain and its private key",
        },
        {
            "name": "mismatch",
            "source": "kv",
            "reason": "the private key does not match the certificate",
        },
    ]
    assert lb.served("www.example.com") == WWW.fingerprint
    lines = [r.getMessage() for r in caplog.records if "skipping certificate" in r.getMessage()]
    assert len(lines) == 2  # one line each, however often the sources are read
    key_line = WWW.key_pem.decode().splitlines()[1]
    assert not any(key_line in r.getMessage() for r in caplog.records)
    assert key_line not in str(lb.runner.report.state())


def test_the_first_and_the_last_certificate_reload(lb: TlsHarness, consul: FakeConsul) -> None:
    lb.register("web", "web-1")
    lb.start_in_background()
    eventually(lambda: lb.routes("web.example.com", "web-1"), what="routing")
    assert lb.tls_state()["https_bound"] is False
    with pytest.raises(OSError):
        lb.served("www.example.com")  # nothing listens without a certificate
    lb.settled("web")
    reloads = lb.reloads()
    consul.put_key(PREFIX + "www", WWW.bundle)
    eventually(lambda: lb.tls_state()["https_bound"], what="the https frontend")
    assert lb.served("www.example.com") == WWW.fingerprint
    assert lb.reloads() == reloads + 1
    consul.delete_key(PREFIX + "www")
    eventually(lambda: not lb.tls_state()["https_bound"], what="the https frontend to go")
    assert lb.reloads() == reloads + 2
    assert lb.routes("web.example.com", "web-1")


def test_a_named_default_stays_the_default(tmp_path: Path, consul: FakeConsul) -> None:
    lb = TlsHarness(tmp_path, consul, default_cert="www.pem")
    try:
        (lb.cert_dir / "www.pem").write_bytes(WWW.bundle)
        lb.start_in_background()
        lb.settled(https=True)
        reloads = lb.reloads()
        # "a.pem" sorts first, but HAPROXY_TLS_DEFAULT_CERT keeps www.pem the default:
        # no reload.
        (lb.cert_dir / "a.pem").write_bytes(WILD.bundle)
        eventually(lambda: lb.served("x.apps.example.com") == WILD.fingerprint, what="added")
        assert lb.served(None) == WWW.fingerprint
        assert lb.reloads() == reloads
    finally:
        lb.stop()


def test_expiry_is_reported_once_and_measured(
    lb: TlsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    soon = CA.issue("soon.example.com", days=3)
    (lb.cert_dir / "soon.pem").write_bytes(soon.bundle)
    caplog.set_level(logging.WARNING, logger="tls")
    lb.start_in_background()
    assert lb.served("soon.example.com") == soon.fingerprint  # served all the same
    lb.runner.tls.apply()
    lines = [r.getMessage() for r in caplog.records if "expires at" in r.getMessage()]
    assert len(lines) == 1 and "certificate 'soon.pem' (soon.example.com)" in lines[0]
    metrics = exposition(lb.runner.report.figures).decode()
    prefix = 'consul_lb_certificate_expiry_timestamp_seconds{name="soon.pem"} '
    (line,) = [ln for ln in metrics.splitlines() if ln.startswith(prefix)]
    assert float(line.removeprefix(prefix)) == soon.cert.not_valid_after_utc.timestamp()

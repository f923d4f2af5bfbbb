"""ACME end to end in the fast tier: a real Pebble (Debian's ``pebble``, on 127.0.0.1, its
DNS answering 127.0.0.1 for every name), a real HAProxy (Debian's) under the runtime's
loop, the in-process Consul with sessions. A tagged service gets its certificate: the
HTTP-01 challenge is answered through HAProxy's http frontend, before the service's own
redirect to https and its allowed networks, and the certificate is served over https
from KV. Then what the ACME server's refusals and absence look like."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from consul_lb.acme.order import AcmeIssuer, OrderError
from consul_lb.acme.settings import AcmeSettings
from consul_lb.acme.store import Store
from consul_lb.consul.client import ConsulClient
from consul_lb.consul.config import ConsulConfig
from consul_lb.observe.metrics import exposition
from consul_lb.tls.bundle import Certificate, parse
from consul_lb.tls.settings import TlsSettings

from devtools.pebble import LocalPebble
from tests.unit.fake_consul import Entry
from tests.unit.fake_consul_kv import FakeConsulKV
from tests.unit.local_haproxy import Backend, free_port
from tests.unit.test_runner import Harness, eventually
from tests.unit.test_tls_render import rendered

ON = "HAPROXY.ENABLE=true"
ACME_TAG = "HAPROXY.FRONTEND.ACME=true"
HOST = "www.example.com"


def pebble_at(tmp_path: Path, http_port: int, **kw: object) -> LocalPebble:
    if shutil.which("pebble") is None:
        pytest.fail("no pebble binary: run ./dev, which installs Debian's pebble")
    return LocalPebble(
        tmp_path / "pebble",
        http_port,
        free_port(),
        free_port(),
        free_port(),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def consul() -> Iterator[FakeConsulKV]:
    fake = FakeConsulKV()
    yield fake
    fake.close()


def test_the_http_frontend_sends_challenges_to_the_runtime_before_any_service() -> None:
    env = {
        "HAPROXY_TLS_CERT_KV": "tls/certs",
        "HAPROXY_ACME_DIRECTORY": "https://acme.example.org/dir",
    }
    config = rendered([ON, ACME_TAG, "HAPROXY.FRONTEND.REDIRECT_HTTPS=true"], env)
    http = config.split("\nfrontend http\n")[1].split("\n\n")[0]
    uses = [ln.strip() for ln in http.splitlines() if ln.strip().startswith("use_backend")]
    assert uses == [
        "use_backend consul_lb_acme if { path_beg /.well-known/acme-challenge/ }",
        "use_backend %[var(txn.backend)] if { var(txn.backend) -m found }",
    ]
    assert "\nbackend consul_lb_acme\n" in config
    https = config.split("\nfrontend https\n")[1].split("\n\n")[0]
    assert "consul_lb_acme" not in https  # HTTP-01 is plain http only
    without = rendered([ON, ACME_TAG], {"HAPROXY_TLS_CERT_KV": "tls/certs"})
    assert "acme" not in without.replace("HAPROXY.FRONTEND.ACME", "")


class AcmeHarness(Harness):
    def __init__(self, tmp_path: Path, consul: FakeConsulKV) -> None:
        self.https_port = free_port()
        http_port = free_port()
        self.pebble = pebble_at(tmp_path, http_port)
        self.pebble.start()
        super().__init__(
            tmp_path / "state",
            consul,
            http_port=http_port,
            tls=TlsSettings(https_port=self.https_port, cert_kv="tls/certs/"),
            acme=AcmeSettings(directory=self.pebble.url, ca_file=self.pebble.ca_file),
        )

    def stop(self) -> None:
        super().stop()
        self.pebble.stop()


def test_a_tagged_service_gets_a_certificate_served_over_https(
    tmp_path: Path, consul: FakeConsulKV
) -> None:
    lb = AcmeHarness(tmp_path, consul)
    try:
        lb.runner.serve_endpoints()
        backend = lb.backends.setdefault("www-1", Backend("www-1"))
        # Plain http redirects to https once a certificate is served, and only clients
        # from 10.0.0.0/8 are let in: neither may keep the ACME server from the answer.
        tags = [ON, ACME_TAG, "HAPROXY.FRONTEND.REDIRECT_HTTPS=true"]
        tags.append("HAPROXY.FRONTEND.ALLOW=10.0.0.0/8")
        consul.register(Entry("www", "www-1", "127.0.0.1", backend.port, tags))
        lb.start_in_background()
        cert = eventually(lambda: issued(consul), timeout=60, what="the certificate in KV")
        assert cert.names == (HOST,)
        context = ssl.create_default_context(cadata=lb.pebble.root().decode())
        eventually(lambda: handshake(context, lb.https_port) == cert.fingerprint, timeout=10)
        state = lb.runner.report.state()["acme"]
        (entry,) = state["certificates"]
        assert entry["name"] == "www.example.com.acme" and entry["sha256"] == cert.fingerprint
        assert entry["last_order"]["result"] == "issued"
        metrics = exposition(lb.runner.report.figures).decode()
        assert 'consul_lb_acme_orders_total{result="issued"} 1.0' in metrics
        assert 'consul_lb_acme_renewal_timestamp_seconds{name="www.example.com.acme"}' in metrics
        # Everything else on the http frontend is the service's: here, a 403.
        assert lb.get(HOST)[0] == 403
        assert lb.get(HOST, path="/.well-known/acme-challenge/unknown-token-123456789")[0] == 404
    finally:
        lb.stop()


def issued(consul: FakeConsulKV) -> Certificate | None:
    raw = consul.value("tls/certs/www.example.com.acme")
    found = parse("www.example.com.acme", "kv", raw) if raw else None
    return found if isinstance(found, Certificate) else None


def handshake(context: ssl.SSLContext, port: int) -> str:
    import hashlib

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        return hashlib.sha256(der or b"").hexdigest()


def issuer(consul: FakeConsulKV, acme: AcmeSettings) -> AcmeIssuer:
    host, port = consul.address.split(":")
    client = ConsulClient(ConsulConfig(host, int(port)))
    return AcmeIssuer(acme, Store(client, "consul-lb/acme/", "tls/certs/"), timeout=20)


def test_an_unreachable_acme_server_is_one_line(consul: FakeConsulKV) -> None:
    url = f"https://127.0.0.1:{free_port()}/dir"  # nothing listens there
    with pytest.raises(OrderError) as caught:
        issuer(consul, AcmeSettings(directory=url)).issue((HOST,))
    assert caught.value.kind == "unreachable"
    assert str(caught.value) == (
        f"ACME server {url} unreachable: ConnectionRefusedError: Connection refused"
    )


def test_a_refusal_says_the_servers_words_and_the_account_is_made_once(
    tmp_path: Path, consul: FakeConsulKV
) -> None:
    pebble = pebble_at(tmp_path, free_port(), blocklist=("blocked.example",))
    pebble.start()
    try:
        acme = AcmeSettings(directory=pebble.url, ca_file=pebble.ca_file)
        with pytest.raises(OrderError) as caught:
            issuer(consul, acme).issue(("www.blocked.example",))
        assert caught.value.kind == "failed"
        assert "rejectedIdentifier" in str(caught.value) and "\n" not in str(caught.value)
        account = consul.value("consul-lb/acme/account.json")
        assert account is not None and b'"kty": "RSA"' in account
        # A second load balancer uses the fleet's account: the key is not made again.
        with pytest.raises(OrderError):
            issuer(consul, dataclasses.replace(acme)).issue(("www.blocked.example",))
        assert consul.value("consul-lb/acme/account.json") == account
    finally:
        pebble.stop()

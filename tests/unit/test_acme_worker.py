"""Fleet coordination of ACME orders (consul_lb/acme/worker.py) against the in-process
Consul with sessions, locks and transactions (fake_consul_kv.py), with an issuer that
stands for the ACME server: it signs with a local CA and counts its orders.

What a user of a fleet relies on: one order per certificate however many load balancers
want it; a holder that dies mid-order loses its lock and another finishes; a holder that
lost its lock cannot overwrite the work of the one that took over; failures back off for
the whole fleet, a rate limit's Retry-After wins, and each problem is logged once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from consul_lb.acme.order import OrderError
from consul_lb.acme.plan import Wanted
from consul_lb.acme.settings import AcmeSettings
from consul_lb.acme.store import Status
from consul_lb.acme.worker import Acme
from consul_lb.consul.client import ConsulClient
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.watch import Outage
from consul_lb.model import Backend, LoadBalancer
from consul_lb.settings import Settings
from consul_lb.tls.bundle import Certificate, parse
from consul_lb.tls.settings import TlsSettings

from devtools.certs import Ca
from tests.unit.fake_consul_kv import FakeConsulKV

CA = Ca()
DIRECTORY = "https://acme.example.org/dir"
SETTINGS = Settings(
    domain="example.com",
    tls=TlsSettings(cert_kv="tls/certs/"),
    acme=AcmeSettings(directory=DIRECTORY, retry=(300.0, 3600.0)),
)
NAME = "www.example.com.acme"
CERT_KEY = f"tls/certs/{NAME}"
STATUS_KEY = f"consul-lb/acme/status/{NAME}"
LOCK_KEY = f"consul-lb/acme/locks/{NAME}"


def published(*hosts: str, acme: bool = True) -> LoadBalancer:
    backend = Backend(
        "www", "www.example.com", "http", "roundrobin", None, (), hosts=hosts, acme=acme
    )
    return LoadBalancer((backend,), ())


WWW = published("www.example.com")
WANT = Wanted(NAME, "www", ("www.example.com",))


@dataclass
class Issuer:
    """Signs with the test CA; ``gate`` (when set) holds each order until it is set,
    ``error`` makes orders fail."""

    days: float = 90
    gate: threading.Event | None = None
    error: OrderError | None = None
    orders: list[tuple[str, ...]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def issue(self, hosts: tuple[str, ...]) -> bytes:
        self.orders.append(hosts)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return CA.issue(*hosts, days=self.days).bundle


@pytest.fixture
def consul() -> Iterator[FakeConsulKV]:
    fake = FakeConsulKV()
    yield fake
    fake.close()


def worker(consul: FakeConsulKV, node: str, issuer: Issuer, **kw: object) -> Acme:
    host, port = consul.address.split(":")
    client = ConsulClient(ConsulConfig(host, int(port)))
    acme = Acme(SETTINGS, client, Outage(consul.address), issuer, node, **kw)  # type: ignore[arg-type]
    acme.want(WWW)
    return acme


def served(consul: FakeConsulKV) -> Certificate:
    found = parse(NAME, "kv", consul.value(CERT_KEY) or b"")
    assert isinstance(found, Certificate), found
    return found


def stored_status(consul: FakeConsulKV) -> dict[str, object]:
    return dict(json.loads(consul.value(STATUS_KEY) or b"{}"))


def test_two_load_balancers_make_one_order(consul: FakeConsulKV) -> None:
    issuer = Issuer(gate=threading.Event())
    a, b = worker(consul, "lb-a", issuer), worker(consul, "lb-b", issuer)
    ordering = threading.Thread(target=a.look, args=(WANT,))
    ordering.start()
    assert issuer.started.wait(10)
    # lb-a orders: lb-b finds the lock held and says by whom.
    assert b.look(WANT) > time.time()
    assert b.state()["certificates"][0]["lock_holder"] == "lb-a"  # type: ignore[index]
    issuer.gate.set()  # type: ignore[union-attr]
    ordering.join(10)
    # lb-b looks again: the certificate lb-a stored is valid, nothing to order.
    assert b.look(WANT) > time.time() + 3000
    assert issuer.orders == [("www.example.com",)]
    assert served(consul).names == ("www.example.com",)
    assert stored_status(consul)["by"] == "lb-a" and stored_status(consul)["result"] == "issued"
    assert consul.holder(LOCK_KEY) is None  # released
    assert a.figures()[0] == {"issued": 1, "failed": 0}
    assert b.figures()[0] == {"issued": 0, "failed": 0}


def test_a_holder_that_dies_mid_order_loses_the_lock_and_another_finishes(
    consul: FakeConsulKV,
) -> None:
    stuck = Issuer(gate=threading.Event())
    a = worker(consul, "lb-a", stuck, lock_delay=0.0)
    threading.Thread(target=a.look, args=(WANT,), daemon=True).start()
    assert stuck.started.wait(10)
    dead = consul.holder(LOCK_KEY)
    assert dead is not None
    consul.expire(dead)  # lb-a stopped renewing: its session's TTL ran out
    b_issuer = Issuer()
    b = worker(consul, "lb-b", b_issuer, lock_delay=0.0)
    b.look(WANT)
    assert b_issuer.orders == [("www.example.com",)]
    finished = served(consul)
    # lb-a was only stalled: it comes back with its certificate, but its lock is gone,
    # and the transaction that checks it refuses to store it over lb-b's.
    stuck.gate.set()  # type: ignore[union-attr]
    a.look(WANT)
    assert served(consul).fingerprint == finished.fingerprint
    assert stored_status(consul)["by"] == "lb-b"
    assert a.figures()[0] == {"issued": 0, "failed": 1}


def test_a_failure_backs_off_for_the_whole_fleet_and_is_logged_once(
    consul: FakeConsulKV, caplog: pytest.LogCaptureFixture
) -> None:
    refused = OrderError("ACME server https://acme.example.org/dir unreachable", "unreachable")
    issuer = Issuer(error=refused)
    a, b = worker(consul, "lb-a", issuer), worker(consul, "lb-b", issuer)
    with caplog.at_level(logging.WARNING, logger="acme"):
        now = time.time()
        assert 0.9 * 300 <= a.look(WANT) - now <= 301
        first = stored_status(consul)
        assert first["result"] == "failed" and first["failures"] == 1
        # lb-b respects the fleet's backoff: no order of its own.
        b.look(WANT)
        assert len(issuer.orders) == 1
        # Time passes (the status says the next attempt is due): it fails again, and
        # the next wait doubles.
        consul.put_key(STATUS_KEY, json.dumps({**first, "next_attempt": time.time() - 1}))
        now = time.time()
        assert 0.9 * 600 <= a.look(WANT) - now <= 601
    assert len(issuer.orders) == 2 and stored_status(consul)["failures"] == 2
    lines = [r.getMessage() for r in caplog.records if "order failed" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "www.example.com" in lines[0] and "unreachable" in lines[0]


def test_a_rate_limit_waits_what_the_server_says(consul: FakeConsulKV) -> None:
    limited = OrderError("too many certificates", "rate_limited", retry_after=7200.0)
    a = worker(consul, "lb-a", Issuer(error=limited))
    now = time.time()
    assert a.look(WANT) - now >= 7200
    assert float(stored_status(consul)["next_attempt"]) >= now + 7200  # type: ignore[arg-type]


def test_a_rate_limit_without_retry_after_waits_the_longest_backoff(
    consul: FakeConsulKV,
) -> None:
    a = worker(consul, "lb-a", Issuer(error=OrderError("slow down", "rate_limited")))
    assert a.look(WANT) - time.time() >= 3600 - 1


def test_a_valid_certificate_takes_no_lock(consul: FakeConsulKV) -> None:
    consul.put_key(CERT_KEY, CA.issue("www.example.com", days=60).bundle)
    issuer = Issuer()
    a = worker(consul, "lb-a", issuer)
    a.look(WANT)
    assert issuer.orders == [] and consul.requests["/v1/session/create"] == 0
    (cert,) = a.state()["certificates"]  # type: ignore[index]
    assert cert["why"] == "valid" and cert["next_renewal"] == pytest.approx(
        cert["not_after"] - 30 * 86400
    )


def test_renewal_and_new_hosts_order_again(consul: FakeConsulKV) -> None:
    # Issued 70 days ago, 20 days left: within the 30 days before expiry.
    consul.put_key(CERT_KEY, CA.issue("www.example.com", days=20, age=70).bundle)
    issuer = Issuer()
    a = worker(consul, "lb-a", issuer)
    a.look(WANT)
    alias = replace(WANT, hosts=("www.example.com", "example.com"))
    a.want(published("www.example.com", "example.com"))
    a.look(alias)
    assert issuer.orders == [("www.example.com",), ("www.example.com", "example.com")]
    assert set(served(consul).names) == {"www.example.com", "example.com"}


def test_wildcard_aliases_are_left_out_with_one_log_line(
    consul: FakeConsulKV, caplog: pytest.LogCaptureFixture
) -> None:
    a = worker(consul, "lb-a", Issuer())
    with caplog.at_level(logging.WARNING, logger="acme"):
        for _ in range(3):
            a.want(published("www.example.com", "*.apps.example.com"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "service 'www': HAPROXY.FRONTEND.ACME=true: *.apps.example.com left out of its "
        "certificate (HTTP-01 cannot validate wildcard names)"
    ]
    assert a.state()["certificates"][0]["hosts"] == ["www.example.com"]  # type: ignore[index]


def test_the_thread_orders_what_the_loop_wants(consul: FakeConsulKV) -> None:
    issuer = Issuer()
    a = worker(consul, "lb-a", issuer)
    a.start()
    try:
        deadline = time.monotonic() + 10
        while consul.value(CERT_KEY) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert served(consul).names == ("www.example.com",)
        # The service loses its tag: nothing more is wanted (the certificate stays in KV).
        a.want(published("www.example.com", acme=False))
        assert a.state()["certificates"] == []  # type: ignore[index]
    finally:
        a.stop()
    assert issuer.orders == [("www.example.com",)]


def test_state_shows_no_key_material(consul: FakeConsulKV) -> None:
    a = worker(consul, "lb-a", Issuer())
    a.look(WANT)
    text = json.dumps(a.state())
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    ((name, renewal),) = a.figures()[1]
    assert name == NAME and renewal == pytest.approx(served(consul).not_after - 30 * 86400)


def test_a_status_written_by_something_else_is_ignored() -> None:
    assert Status.decode(b"{not json") is None
    assert Status.decode(b'{"result": "issued"}') is None


def test_a_certificate_change_looks_again_at_once_at_one_another_was_ordering(
    consul: FakeConsulKV,
) -> None:
    issuer = Issuer(gate=threading.Event())
    a, b = worker(consul, "lb-a", issuer), worker(consul, "lb-b", issuer)
    ordering = threading.Thread(target=a.look, args=(WANT,))
    ordering.start()
    assert issuer.started.wait(10)
    b.certs[NAME].next_look = b.look(WANT)  # lb-a holds the lock: lb-b looks again later
    assert b.certs[NAME].next_look > time.time()
    issuer.gate.set()  # type: ignore[union-attr]
    ordering.join(10)
    b.certificates_changed()  # the TLS KV watch saw lb-a's certificate
    assert b.certs[NAME].next_look == 0.0 and b.wake.is_set()
    assert b.look(WANT) > time.time() + 3000  # and it is valid: nothing to order
    assert issuer.orders == [("www.example.com",)]

"""Which certificates a load balancer wants, and when each is due (consul_lb/acme/plan.py):
hosts from the tag and the aliases, wildcards left out, renewal before expiry (at the
latest halfway through a certificate's life), the fleet's backoff after a failure."""

from __future__ import annotations

import dataclasses
import time

import pytest
from consul_lb.acme.plan import Stored, Wanted, backoff, decide, renewal_time, stored, wanted
from consul_lb.acme.settings import AcmeSettings
from consul_lb.acme.store import Status
from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.model import build
from consul_lb.settings import Settings

from devtools.certs import Ca

DAY = 86400.0
ACME = AcmeSettings(directory="https://acme.example.org/dir")
ON = "HAPROXY.ENABLE=true"
TAG = "HAPROXY.FRONTEND.ACME=true"
CA = Ca()


def lb_of(services: dict[str, list[str]]) -> list[Wanted]:
    instances = {
        name: [Instance("node-1", f"{name}-1", "10.0.0.1", 8000, tuple(sorted(tags)))]
        for name, tags in services.items()
    }
    lb, _ = build(Catalog.build(services, instances), Settings(domain="example.com"))
    return wanted(lb)


def test_a_tagged_service_wants_its_host_and_exact_aliases() -> None:
    found = lb_of(
        {
            "www": [ON, TAG, "HAPROXY.FRONTEND.HOSTS=example.com,*.shop.example.com"],
            "api": [ON],
            "db": [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"],
            "off": [ON, "HAPROXY.FRONTEND.ACME=false"],
        }
    )
    assert found == [
        Wanted(
            name="www.example.com.acme",
            service="www",
            hosts=("www.example.com", "example.com"),
            skipped=("*.shop.example.com",),
        )
    ]


def cert(days_left: float, life: float = 90 * DAY) -> Stored:
    now = time.time()
    after = now + days_left * DAY
    return Stored(("www.example.com",), after - life, after, "ab" * 32)


WWW = Wanted("www.example.com.acme", "www", ("www.example.com",))


def test_renewal_is_the_window_before_expiry_or_halfway_through_a_short_life() -> None:
    c = cert(60)
    assert renewal_time(c, 30 * DAY) == c.not_after - 30 * DAY
    short = cert(60, life=120.0)  # two minutes of validity: renewed after one
    assert renewal_time(short, 30 * DAY) == short.not_after - 60.0


@pytest.mark.parametrize(
    ("stored_cert", "due", "why"),
    [
        (None, True, "no certificate yet"),
        (cert(60), False, "valid"),
        (cert(29), True, "it expires at"),
        (dataclasses.replace(cert(60), names=("old.example.com",)), True, "lacks www.example.com"),
    ],
)
def test_due(stored_cert: Stored | None, due: bool, why: str) -> None:
    decision = decide(WWW, stored_cert, None, ACME, time.time())
    assert decision.due is due and why in decision.why


def test_a_valid_certificate_is_looked_at_again_at_its_renewal_time() -> None:
    c = cert(60)
    assert decide(WWW, c, None, ACME, time.time()).at == c.not_after - 30 * DAY


def status(**kw: object) -> Status:
    base = Status("issued", time.time(), WWW.hosts, ACME.directory or "", "lb-1")
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_another_directory_means_a_new_certificate() -> None:
    # From Let's Encrypt's staging to its production directory: the staging certificate
    # is replaced at once.
    old = status(directory="https://acme-staging-v02.api.letsencrypt.org/directory")
    decision = decide(WWW, cert(60), old, ACME, time.time())
    assert decision.due and "issued by https://acme-staging" in decision.why


def test_the_fleets_backoff_holds_while_the_hosts_are_the_same() -> None:
    now = time.time()
    failed = status(result="failed", error="boom", failures=2, next_attempt=now + 600)
    decision = decide(WWW, None, failed, ACME, now)
    assert not decision.due and decision.at == now + 600 and "boom" in decision.why
    # Its time has come: due again.
    assert decide(WWW, None, dataclasses.replace(failed, next_attempt=now - 1), ACME, now).due
    # The hosts changed (an alias fixed): no reason to wait.
    other = dataclasses.replace(WWW, hosts=("www.example.com", "example.com"))
    assert decide(other, None, failed, ACME, now).due


def test_backoff_doubles_up_to_the_maximum() -> None:
    # 5 min, 10, 20, 40, then the hour; up to 10 % less (jitter spreads a fleet out).
    for failures, minutes in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)]:
        assert 0.9 * minutes * 60 <= backoff(failures, 300, 3600) <= minutes * 60


def test_a_bad_or_missing_bundle_is_no_certificate() -> None:
    assert stored("x", None) is None
    assert stored("x", b"not a bundle") is None
    leaf = CA.issue("www.example.com", days=90)
    found = stored("x", leaf.bundle)
    assert found is not None
    assert found.names == ("www.example.com",)
    assert found.not_after == leaf.cert.not_valid_after_utc.timestamp()
    assert found.not_before == leaf.cert.not_valid_before_utc.timestamp()

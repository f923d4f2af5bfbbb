"""Which certificates are wanted, and when each is due (pure: no I/O, the clock given).

A service tagged ``HAPROXY.FRONTEND.ACME=true`` wants one certificate for its hosts: its
own ``<service>.<HAPROXY_DOM>`` and its exact aliases. Wildcard aliases are left out:
HTTP-01 cannot validate them (RFC 8555 section 8.3; Let's Encrypt issues wildcards with
DNS-01 only). The certificate is stored under ``HAPROXY_TLS_CERT_KV`` as
``<service>.<HAPROXY_DOM>.acme``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from cryptography import x509

from consul_lb.acme.settings import AcmeSettings
from consul_lb.acme.store import Status
from consul_lb.model import LoadBalancer
from consul_lb.tls.bundle import Certificate, parse

SUFFIX = ".acme"


@dataclass(frozen=True)
class Wanted:
    name: str  # the certificate's name under HAPROXY_TLS_CERT_KV
    service: str
    hosts: tuple[str, ...]  # the service's own host first, then its exact aliases
    skipped: tuple[str, ...] = ()  # wildcard aliases HTTP-01 cannot validate


def wanted(lb: LoadBalancer) -> list[Wanted]:
    found = []
    for b in lb.http_backends:
        if not b.acme:
            continue
        exact = tuple(h for h in b.hosts if not h.startswith("*."))
        found.append(
            Wanted(
                name=f"{b.name}{SUFFIX}",
                service=b.service,
                hosts=exact,
                skipped=tuple(h for h in b.hosts if h.startswith("*.")),
            )
        )
    return found


@dataclass(frozen=True)
class Stored:
    """The certificate stored for a name, as far as renewal is concerned."""

    names: tuple[str, ...]
    not_before: float
    not_after: float
    fingerprint: str


def stored(name: str, bundle: bytes | None) -> Stored | None:
    """None when there is no usable certificate (absent or a bad bundle: order one)."""
    if bundle is None:
        return None
    cert = parse(name, "kv", bundle)
    if not isinstance(cert, Certificate):
        return None
    leaf = x509.load_pem_x509_certificates(cert.pem)[0]  # parse() puts the leaf first
    return Stored(
        cert.names, leaf.not_valid_before_utc.timestamp(), cert.not_after, cert.fingerprint
    )


def renewal_time(cert: Stored, renew_before: float) -> float:
    """``renew_before`` before expiry, but at the latest halfway through the certificate's
    life: a certificate shorter-lived than twice the window would otherwise be due as
    soon as it is issued, and be ordered again and again."""
    life = max(0.0, cert.not_after - cert.not_before)
    return cert.not_after - min(renew_before, life / 2)


@dataclass(frozen=True)
class Decision:
    due: bool
    at: float  # when to order (due) or to look again (not due)
    why: str


def decide(
    want: Wanted,
    cert: Stored | None,
    status: Status | None,
    acme: AcmeSettings,
    now: float,
) -> Decision:
    """Whether ``want`` needs an order now, given what the fleet stored."""
    retrying = (
        status is not None
        and status.result == "failed"
        and status.hosts == want.hosts
        and status.next_attempt is not None
        and status.next_attempt > now
    )
    if retrying:
        assert status is not None and status.next_attempt is not None
        return Decision(False, status.next_attempt, f"the last order failed: {status.error}")
    if cert is None:
        return Decision(True, now, "no certificate yet")
    missing = sorted(set(want.hosts) - set(cert.names))
    if missing:
        return Decision(True, now, f"the certificate lacks {', '.join(missing)}")
    if status is not None and status.result == "issued" and status.directory != acme.directory:
        return Decision(True, now, f"it was issued by {status.directory}")
    at = renewal_time(cert, acme.renew_before)
    if at <= now:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert.not_after))
        return Decision(True, now, f"it expires at {when}")
    return Decision(False, at, "valid")


def backoff(failures: int, low: float, high: float) -> float:
    """Seconds before the next order after ``failures`` failed ones in a row (1, 2, ...),
    doubling from ``low`` up to ``high``, with jitter so that a fleet spreads out."""
    delay = min(high, low * 2.0 ** max(0, failures - 1))
    return delay * random.uniform(0.9, 1.0)


def after_failure(
    want: Wanted,
    previous: Status | None,
    error: str,
    kind: str,
    retry_after: float | None,
    acme: AcmeSettings,
    node: str,
    now: float,
) -> Status:
    """The status a failed order leaves for the fleet: failures in a row for the same
    hosts counted up, the next attempt after the backoff, or after the server's
    Retry-After when it is longer (a rate limit without one waits the longest backoff)."""
    again = previous is not None and previous.result == "failed" and previous.hosts == want.hosts
    failures = (previous.failures if again and previous else 0) + 1
    delay = backoff(failures, *acme.retry)
    if retry_after is not None:
        delay = max(delay, retry_after)
    elif kind == "rate_limited":
        delay = max(delay, acme.retry[1])
    directory = acme.directory or ""
    return Status("failed", now, want.hosts, directory, node, error, failures, now + delay)

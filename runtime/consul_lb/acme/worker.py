"""ACME off the event loop: one thread orders and renews the certificates the applied
load balancer wants, coordinated with the rest of the fleet through Consul.

The loop calls ``want(lb)`` after each apply; the thread looks at each wanted
certificate when it is due (at once for a new one, at its renewal time, after a backoff)
and never touches HAProxy: the certificate it stores under ``HAPROXY_TLS_CERT_KV`` reaches
every load balancer, this one included, through the TLS KV watch, without a reload.

One look at a certificate (``look``):

1. read what the fleet stored (the certificate, the last order's status); nothing to do
   while it is valid, or while the fleet's backoff after a failure runs (``plan.decide``);
2. due: take the certificate's lock with a new Consul session; another load balancer
   holds it: look again in ``lock_retry`` seconds (by then it has stored its work, or
   died and lost the lock with its session's TTL);
3. holding the lock, read again from the leader (a holder that just finished has stored
   its certificate) and decide again, then order, store the certificate and its status
   in one transaction that checks the lock is still held, and release it.

``state()`` and ``figures()`` are read by other threads (endpoints, metrics): what they
read is guarded by ``lock``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Protocol

from consul_lb.acme.challenges import Challenges
from consul_lb.acme.known import Cert
from consul_lb.acme.order import AcmeIssuer, OrderError
from consul_lb.acme.plan import (
    Decision,
    Wanted,
    after_failure,
    decide,
    renewal_time,
    stored,
    wanted,
)
from consul_lb.acme.store import LOCK_DELAY, SESSION_TTL, Session, Status, Store
from consul_lb.consul.client import ConsulClient, ConsulError
from consul_lb.consul.watch import Outage
from consul_lb.model import LoadBalancer
from consul_lb.settings import Settings

log = logging.getLogger("acme")
# The acme library logs every request and answer at debug level: too much for our debug.
logging.getLogger("acme.client").setLevel(logging.INFO)

LOCK_RETRY = 10.0  # seconds before looking again at a certificate another one orders
CONSUL_RETRY = 10.0  # seconds before looking again when Consul could not be read
RECHECK = 3600.0  # a valid certificate is looked at again at least this often


class Issuer(Protocol):
    def issue(self, hosts: tuple[str, ...]) -> bytes: ...


class Acme:
    def __init__(
        self,
        settings: Settings,
        client: ConsulClient,
        outage: Outage,
        issuer: Issuer | None = None,
        node: str | None = None,
        lock_retry: float = LOCK_RETRY,
        session_ttl: float = SESSION_TTL,
        lock_delay: float = LOCK_DELAY,
    ) -> None:
        self.acme = settings.acme
        self.enabled = self.acme.enabled
        self.client = client
        self.node = node or socket.gethostname()
        self.lock_retry = lock_retry
        self.session_ttl = session_ttl
        self.lock_delay = lock_delay
        self.store = Store(client, self.acme.kv, settings.tls.cert_kv or "")
        self.challenges = Challenges(client, self.store, outage)
        self.issuer: Issuer | None = issuer
        if self.enabled and issuer is None:
            self.issuer = AcmeIssuer(self.acme, self.store)
        self.lock = threading.Lock()
        self.certs: dict[str, Cert] = {}
        self.orders = {"issued": 0, "failed": 0}
        self.reported: dict[str, str] = {}  # certificate -> the problem logged last
        self.told: set[tuple[str, ...]] = set()  # wildcard hosts already logged
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="acme", daemon=True)

    # -- from the loop ------------------------------------------------------------------
    def start(self) -> None:
        if self.enabled:
            self.challenges.start()
            self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.challenges.stop()

    def want(self, lb: LoadBalancer | None) -> None:
        """After each apply: the certificates the published services ask for."""
        if not self.enabled or lb is None:
            return
        found = {w.name: w for w in wanted(lb)}
        with self.lock:
            for name in set(self.certs) - set(found):
                del self.certs[name]  # its certificate stays in KV, no longer renewed
            for name, w in found.items():
                old = self.certs.get(name)
                if old is None or old.want != w:
                    self.certs[name] = Cert(w)  # looked at now
        for w in found.values():
            if w.skipped and (w.service, *w.skipped) not in self.told:
                self.told.add((w.service, *w.skipped))
                log.warning(
                    "service %r: HAPROXY.FRONTEND.ACME=true: %s left out of its certificate "
                    "(HTTP-01 cannot validate wildcard names)",
                    w.service,
                    ", ".join(w.skipped),
                )
        self.wake.set()

    def certificates_changed(self) -> None:
        """A certificate source changed (the loop's CERTS event): certificates another
        load balancer was ordering are looked at again now, not after ``lock_retry``."""
        if not self.enabled:
            return
        with self.lock:
            for cert in self.certs.values():
                if cert.holder is not None:
                    cert.next_look = 0.0
        self.wake.set()

    def answer(self, token: str) -> str | None:
        """An HTTP-01 key authorization (the runtime's HTTP server asks)."""
        return self.challenges.answer(token) if self.enabled else None

    # -- the thread ---------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopped.is_set():
            self.wake.clear()
            now = time.time()
            with self.lock:
                due = [c.want for c in self.certs.values() if c.next_look <= now]
            for w in due:
                if self.stopped.is_set():
                    return
                try:
                    at = self.look(w)
                except Exception:  # the thread never dies; the certificate is looked at later
                    log.exception("certificate %r: unexpected error; looking again later", w.name)
                    at = time.time() + self.acme.retry[0]
                with self.lock:
                    cert = self.certs.get(w.name)
                    if cert is not None and cert.want == w:
                        cert.next_look = at
            with self.lock:
                then = min((c.next_look for c in self.certs.values()), default=now + RECHECK)
            self.wake.wait(min(RECHECK, max(0.0, then - time.time())))

    def look(self, w: Wanted) -> float:
        """Look at one certificate, order it when due; when to look again."""
        try:
            decision, _ = self._read(w, consistent=False)
            if not decision.due:
                return min(decision.at, time.time() + RECHECK)
            return self._locked(w)
        except ConsulError as exc:
            self._problem(w, f"Consul KV cannot be read or written ({exc})")
            return time.time() + CONSUL_RETRY

    def _read(self, w: Wanted, consistent: bool) -> tuple[Decision, Status | None]:
        bundle, status = self.store.read(w.name, consistent)
        cert = stored(w.name, bundle)
        decision = decide(w, cert, status, self.acme, time.time())
        self._record(w, stored=cert, status=status, decision=decision)
        return decision, status

    def _locked(self, w: Wanted) -> float:
        name = f"consul-lb acme {w.name}"
        with Session(self.client, name, self.session_ttl, self.lock_delay) as session:
            if not self.store.acquire(w.name, session.id, self.node):
                self._record(w, holder=self.store.holder(w.name) or "unknown")
                return time.time() + self.lock_retry
            self._record(w, holder=None)
            try:
                decision, status = self._read(w, consistent=True)
                if not decision.due:
                    return min(decision.at, time.time() + RECHECK)
                return self._order(w, decision, status, session)
            finally:
                # When Consul refuses, destroying the session releases the lock all the same.
                with contextlib.suppress(ConsulError):
                    self.store.release(w.name, session.id)

    def _order(
        self, w: Wanted, decision: Decision, previous: Status | None, session: Session
    ) -> float:
        assert self.issuer is not None
        log.info("certificate %r: ordering for %s (%s)", w.name, ", ".join(w.hosts), decision.why)
        try:
            bundle = self.issuer.issue(w.hosts)
        except OrderError as exc:
            return self._failed(w, previous, exc)
        now = time.time()
        status = Status("issued", now, w.hosts, self.acme.directory or "", self.node)
        if session.lost.is_set() or not self.store.store(w.name, bundle, status, session.id):
            log.warning(
                "certificate %r: the lock was lost during the order (this load balancer "
                "stalled past the session's TTL); the certificate is not stored",
                w.name,
            )
            with self.lock:
                self.orders["failed"] += 1
            return now + self.lock_retry
        with self.lock:
            self.orders["issued"] += 1
        self.reported.pop(w.name, None)
        cert = stored(w.name, bundle)
        if cert is None:  # the server sent something HAProxy will not serve: try again
            return self._failed(w, previous, OrderError("the issued certificate is unusable"))
        at = renewal_time(cert, self.acme.renew_before)
        self._record(w, stored=cert, status=status, decision=Decision(False, at, "valid"))
        log.info(
            "certificate %r issued for %s, expires %s; stored under HAPROXY_TLS_CERT_KV",
            w.name,
            ", ".join(w.hosts),
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert.not_after)),
        )
        return min(at, now + RECHECK)

    def _failed(self, w: Wanted, previous: Status | None, exc: OrderError) -> float:
        status = after_failure(
            w, previous, str(exc), exc.kind, exc.retry_after, self.acme, self.node, time.time()
        )
        assert status.next_attempt is not None
        with self.lock:
            self.orders["failed"] += 1
        self._record(w, status=status, decision=Decision(False, status.next_attempt, str(exc)))
        try:
            self.store.write_status(w.name, status)  # the whole fleet backs off
        except ConsulError as err:
            log.warning("certificate %r: the order's status not stored: %s", w.name, err)
        self._problem(w, f"order failed ({exc.kind}): {exc}")
        return status.next_attempt

    # -- what operators see -----------------------------------------------------------
    def _record(self, w: Wanted, **values: Any) -> None:
        with self.lock:
            cert = self.certs.get(w.name)
            if cert is not None and cert.want == w:
                for key, value in values.items():
                    setattr(cert, key, value)

    def _problem(self, w: Wanted, problem: str) -> None:
        """Log a problem once while it lasts (again only when it changes)."""
        if self.reported.get(w.name) != problem:
            self.reported[w.name] = problem
            log.warning(
                "certificate %r (%s): %s; trying again with backoff (see /_consul_lb/state)",
                w.name,
                ", ".join(w.hosts),
                problem,
            )

    def state(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        with self.lock:
            certs = [c.public(self.acme.renew_before) for c in self.certs.values()]
            orders = dict(self.orders)
        return {
            "directory": self.acme.directory,
            "kv": self.acme.kv,
            "node": self.node,
            "orders": orders,
            "certificates": sorted(certs, key=lambda c: str(c["name"])),
            "challenge_watch": self.challenges.status.public(),
        }

    def figures(self) -> tuple[dict[str, int], list[tuple[str, float]]]:
        """Orders this load balancer made, by result; each certificate's next renewal."""
        with self.lock:
            renewals = [
                (c.want.name, renewal_time(c.stored, self.acme.renew_before))
                for c in self.certs.values()
                if c.stored is not None
            ]
            return dict(self.orders), sorted(renewals)

"""What ACME keeps in Consul KV, and the session lock that lets one load balancer of a
fleet order a given certificate at a time.

Under ``HAPROXY_ACME_KV`` (``consul-lb/acme/`` by default):

- ``account.json``: the ACME account's private key (a JWK), written once (``cas=0``:
  the first load balancer to write it wins, the others read it);
- ``locks/<certificate>``: acquired with a Consul session (``?acquire=``) by the load
  balancer that orders or renews that certificate; its value names the holder;
- ``status/<certificate>``: JSON of the last order (result, error, failures, next
  attempt, the directory it was made with), read by every load balancer, so that a
  failure's backoff holds for the whole fleet;
- ``challenges/<token>``: an HTTP-01 key authorization while its order runs.

The certificate itself (chain and key, one PEM bundle) goes under ``HAPROXY_TLS_CERT_KV``
where every load balancer loads it (consul_lb/tls/sources.py). It is written in one Consul
transaction with a ``check-session`` of the lock, so a load balancer whose session was
lost (it stalled past the TTL) cannot overwrite the work of the one that took over.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from consul_lb.consul.client import ConsulClient, ConsulError, ConsulHTTPError

log = logging.getLogger("acme")

SESSION_TTL = 15.0  # seconds: a holder that dies loses its locks after 15 to 30 s
# After a session is invalidated, Consul refuses its locks to others this long: a holder
# cut off from Consul for a moment has stopped writing by then.
LOCK_DELAY = 5.0


@dataclass(frozen=True)
class Status:
    """The last order of one certificate, as the fleet shares it (``status/<name>``)."""

    result: str  # "issued" or "failed"
    time: float  # when the order ended (Unix time)
    hosts: tuple[str, ...]  # the hosts it was for
    directory: str  # HAPROXY_ACME_DIRECTORY it was made with
    by: str  # the load balancer that made it
    error: str | None = None
    failures: int = 0  # failed orders in a row for these hosts
    next_attempt: float | None = None  # no order before this (backoff, Retry-After)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Status | None:
        try:
            data = json.loads(raw)
            return cls(
                result=str(data["result"]),
                time=float(data["time"]),
                hosts=tuple(str(h) for h in data["hosts"]),
                directory=str(data["directory"]),
                by=str(data["by"]),
                error=None if data.get("error") is None else str(data["error"]),
                failures=int(data.get("failures", 0)),
                next_attempt=None
                if data.get("next_attempt") is None
                else float(data["next_attempt"]),
            )
        except (ValueError, KeyError, TypeError):
            return None  # written by something else: as if there were none


class Store:
    def __init__(self, client: ConsulClient, acme_kv: str, tls_kv: str) -> None:
        self.client = client
        self.acme_kv = acme_kv
        self.tls_kv = tls_kv

    # -- keys ---------------------------------------------------------------------------
    def cert_key(self, name: str) -> str:
        return f"{self.tls_kv}{name}"

    def lock_key(self, name: str) -> str:
        return f"{self.acme_kv}locks/{name}"

    def status_key(self, name: str) -> str:
        return f"{self.acme_kv}status/{name}"

    def challenge_key(self, token: str) -> str:
        return f"{self.acme_kv}challenges/{token}"

    @property
    def challenges_prefix(self) -> str:
        return f"{self.acme_kv}challenges/"

    @property
    def account_key(self) -> str:
        return f"{self.acme_kv}account.json"

    # -- reads ----------------------------------------------------------------------------
    def get(self, key: str, consistent: bool = False) -> tuple[bytes | None, str | None]:
        """A key's value and the session holding it (None, None when it is absent).
        ``consistent`` reads from the leader: after taking a lock, what the previous
        holder wrote must be seen."""
        try:
            response = self.client.get(f"/v1/kv/{quote(key)}", stale=not consistent)
        except ConsulHTTPError as exc:
            if exc.status == 404:
                return None, None
            raise
        entry = (response.data or [{}])[0]
        value = entry.get("Value")
        return (base64.b64decode(value) if value else b""), entry.get("Session")

    def read(self, name: str, consistent: bool = False) -> tuple[bytes | None, Status | None]:
        """The certificate bundle stored for ``name`` and its last order's status."""
        bundle, _ = self.get(self.cert_key(name), consistent)
        raw, _ = self.get(self.status_key(name), consistent)
        return bundle, None if raw is None else Status.decode(raw)

    def holder(self, name: str) -> str | None:
        """Who holds the lock of ``name`` now (None: nobody)."""
        value, session = self.get(self.lock_key(name))
        if not session:
            return None
        return (value or b"").decode(errors="replace")[:128] or "unknown"

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: str, value: bytes, **params: str) -> bool:
        return bool(self.client.put(f"/v1/kv/{quote(key)}", body=value, params=params))

    def delete(self, key: str) -> None:
        self.client.delete(f"/v1/kv/{quote(key)}")

    def create_once(self, key: str, value: bytes) -> bool:
        """Write ``key`` only if it does not exist (``cas=0``); False when it did."""
        return self.put(key, value, cas="0")

    def acquire(self, name: str, session: str, holder: str) -> bool:
        return self.put(self.lock_key(name), holder.encode(), acquire=session)

    def release(self, name: str, session: str) -> None:
        self.put(self.lock_key(name), b"", release=session)

    def write_status(self, name: str, status: Status) -> None:
        self.put(self.status_key(name), status.encode())

    def store(self, name: str, bundle: bytes, status: Status, session: str) -> bool:
        """The new certificate and its status, only while ``session`` holds the lock of
        ``name`` (one transaction); False when it no longer does."""
        ops: list[dict[str, Any]] = [
            {"KV": {"Verb": "check-session", "Key": self.lock_key(name), "Session": session}},
            {"KV": {"Verb": "set", "Key": self.cert_key(name), "Value": _b64(bundle)}},
            {"KV": {"Verb": "set", "Key": self.status_key(name), "Value": _b64(status.encode())}},
        ]
        try:
            self.client.put("/v1/txn", body=ops)
        except ConsulHTTPError as exc:
            if exc.status == 409:  # the check-session failed: the transaction rolled back
                return False
            raise
        return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Session:
    """A Consul session with a TTL, renewed by its own thread while an order runs (the
    order's network calls take seconds). ``lost`` is set when Consul says it is gone."""

    client: ConsulClient
    name: str
    ttl: float = SESSION_TTL
    lock_delay: float = LOCK_DELAY
    id: str = ""
    lost: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Session:
        answer = self.client.put(
            "/v1/session/create",
            body={
                "Name": self.name,
                "TTL": f"{max(1, round(self.ttl))}s",
                # Its locks are released, not deleted, when it ends: the lock key says
                # who held it last.
                "Behavior": "release",
                "LockDelay": f"{self.lock_delay:g}s",
            },
        )
        self.id = str(answer["ID"])
        threading.Thread(target=self._renew, name=f"acme-session:{self.name}", daemon=True).start()
        return self

    def _renew(self) -> None:
        renewed = time.monotonic()
        while not self.done.wait(self.ttl / 3):
            try:
                self.client.put(f"/v1/session/renew/{self.id}")
                renewed = time.monotonic()
            except ConsulHTTPError as exc:
                if exc.status == 404:  # invalidated: its locks are gone
                    self.lost.set()
                    return
            except ConsulError:
                pass  # tried again a third of the TTL later
            if time.monotonic() - renewed > self.ttl:  # Consul may have ended it by now
                self.lost.set()
                return

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        try:
            self.client.put(f"/v1/session/destroy/{self.id}")
        except ConsulError as err:  # it ends with its TTL anyway
            log.debug("session %s not destroyed: %s", self.id, err)

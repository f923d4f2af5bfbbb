"""HTTP-01 answers: ``GET /.well-known/acme-challenge/<token>`` on the http frontend,
whatever the host, is routed by HAProxy to the runtime's HTTP server, which answers with
the token's key authorization from Consul KV (``<HAPROXY_ACME_KV>challenges/<token>``).

Every load balancer of the fleet answers every token, so the ACME server may validate
through any of them. The answers come from a watched copy of the prefix (one blocking
query): a request costs Consul nothing, however many arrive. A token the copy has not
seen yet (published a few milliseconds ago: an ACME server validates at once, from
several places at the same time) is read from Consul directly, at most ``DIRECT_BURST``
reads at once and ``DIRECT_RATE`` a second on average, so that nobody can turn the
public port into load on Consul.

Tokens and key authorizations are checked against their closed patterns (RFC 8555
section 8.3: base64url characters; a key authorization is the token, a dot and the
account key's SHA-256 thumbprint): nothing else is ever answered.
"""

from __future__ import annotations

import re
import threading
import time

from consul_lb.acme.store import Store
from consul_lb.consul.client import ConsulClient, ConsulError, ConsulHTTPError, Response
from consul_lb.consul.watch import BlockingQuery, Outage, Watched, WatchTiming
from consul_lb.tls.sources import decode_entries

PATH_PREFIX = "/.well-known/acme-challenge/"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}\Z")
KEY_AUTHORIZATION = re.compile(r"^([A-Za-z0-9_-]{16,128})\.[A-Za-z0-9_-]{43}\Z")
# Direct reads of tokens the watched copy lacks: a token bucket.
DIRECT_BURST = 8
DIRECT_RATE = 10.0  # per second


def valid(token: str, key_authorization: str) -> bool:
    m = KEY_AUTHORIZATION.match(key_authorization)
    return m is not None and m.group(1) == token


class Challenges(Watched):
    def __init__(
        self,
        client: ConsulClient,
        store: Store,
        outage: Outage,
        timing: WatchTiming | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.prefix = store.challenges_prefix
        self.lock = threading.Lock()
        self.tokens: dict[str, str] = {}
        self.bucket = float(DIRECT_BURST)
        self.filled = time.monotonic()
        self.query = BlockingQuery(
            "acme-challenges", self._fetch, self._on_data, timing or WatchTiming(), outage
        )

    def answer(self, token: str) -> str | None:
        """The key authorization for ``token``, or None (404)."""
        if not TOKEN.match(token):
            return None
        with self.lock:
            found = self.tokens.get(token)
        return found if found is not None else self._read(token)

    def _read(self, token: str) -> str | None:
        with self.lock:
            now = time.monotonic()
            self.bucket = min(DIRECT_BURST, self.bucket + (now - self.filled) * DIRECT_RATE)
            self.filled = now
            if self.bucket < 1:
                return None
            self.bucket -= 1
        try:
            raw, _ = self.store.get(self.store.challenge_key(token), consistent=True)
        except ConsulError:
            return None
        value = (raw or b"").decode(errors="replace")
        return value if valid(token, value) else None

    def _fetch(self, index: int | None) -> Response:
        try:
            return self.client.get(
                f"/v1/kv/{self.prefix}",
                params={"recurse": ""},
                index=index,
                wait=self.query.timing.wait,
            )
        except ConsulHTTPError as exc:
            if exc.status == 404:  # no challenge published now
                return Response([], exc.index)
            raise

    def _on_data(self, response: Response) -> None:
        tokens = {}
        for token, raw in decode_entries(response.data, self.prefix).items():
            value = raw.decode(errors="replace") if isinstance(raw, bytes) else ""
            if TOKEN.match(token) and valid(token, value):
                tokens[token] = value
        with self.lock:
            self.tokens = tokens

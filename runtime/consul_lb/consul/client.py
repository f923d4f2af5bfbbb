"""Consul's HTTP API over one bounded connection pool.

Consul's agent refuses HTTP connections from one client address beyond
``limits.http_max_conns_per_client`` (200 by default): it resets them. Every request of
the runtime therefore goes through one urllib3 pool of at most ``max_conns``
connections (``block=True``: a request waits for a free connection rather than opening
one more), whatever the number of services watched.

Reads can be served by any Consul server (``?stale``), as consul-template's
``max_stale`` allows: an answer whose ``X-Consul-LastContact`` says the server lost
contact with the leader for longer than ``max_stale`` is asked again of the leader.
See https://developer.hashicorp.com/consul/api-docs/features/consistency and
https://developer.hashicorp.com/consul/api-docs/features/blocking.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import urllib3
from urllib3.exceptions import HTTPError

from consul_lb.consul.config import ConsulConfig
from consul_lb.durations import format_duration

# How much longer than ``wait`` a blocking query may take: Consul adds up to wait/16
# of jitter (see the blocking queries page above), plus time on the wire.
BLOCKING_SLACK = 1 / 16
READ_MARGIN = 5.0


class ConsulError(RuntimeError):
    """A request to Consul failed: no connection, a timeout, or an error status."""


class ConsulUnavailable(ConsulError):
    """Consul could not be reached or closed the connection."""


class ConsulHTTPError(ConsulError):
    """Consul answered with an error status; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.status = status
        # Consul sends X-Consul-Index with a 404 of a KV key too: a blocking query can
        # wait for the key to appear.
        self.index = index


@dataclass(frozen=True)
class Response:
    """One answer: the body decoded from JSON (None for an empty body), the
    ``X-Consul-Index`` (0 when absent) and how stale the answering server was."""

    data: Any
    index: int = 0
    last_contact_ms: int = 0


@dataclass
class ClientStats:
    """Counters for /metrics and the benchmarks."""

    requests: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, ok: bool) -> None:
        with self.lock:
            self.requests += 1
            if not ok:
                self.errors += 1


class ConsulClient:
    """GET/PUT/DELETE on Consul's HTTP API through a pool of at most ``max_conns``
    connections; thread-safe (urllib3 pools are)."""

    def __init__(
        self,
        config: ConsulConfig,
        max_conns: int = 64,
        max_stale: float = 2.0,
        timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.max_conns = max_conns
        self.max_stale = max_stale
        self.timeout = timeout
        self.stats = ClientStats()
        kwargs: dict[str, Any] = {}
        if config.scheme == "https":
            if config.verify is False:
                kwargs["cert_reqs"] = "CERT_NONE"
            else:
                kwargs["cert_reqs"] = "CERT_REQUIRED"
                if isinstance(config.verify, str):
                    kwargs["ca_certs"] = config.verify
            if config.cert:
                kwargs["cert_file"], kwargs["key_file"] = config.cert
        self.pool = urllib3.connection_from_url(
            f"{config.scheme}://{config.host}:{config.port}",
            maxsize=max_conns,
            block=True,
            retries=False,
            **kwargs,
        )
        self.headers = {"Accept-Encoding": "gzip"}
        if config.token:
            self.headers["X-Consul-Token"] = config.token

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (urllib3 counts them): at most ``max_conns`` alive."""
        return int(self.pool.num_connections)

    def get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        index: int | None = None,
        wait: float | None = None,
        stale: bool = True,
    ) -> Response:
        """GET ``path`` (e.g. ``/v1/health/service/web``). With ``index`` it is a
        blocking query that returns once Consul's index passes it, or after ``wait``
        seconds. Raises ConsulUnavailable or ConsulHTTPError."""
        query = dict(params or {})
        if index:
            # Index 0 would make a non-blocking call of what is meant as blocking.
            query["index"] = str(index)
            if wait is not None:
                query["wait"] = format_duration(wait)
        use_stale = stale and self.max_stale > 0
        if use_stale:
            query["stale"] = ""
        timeout = self.timeout
        if index and wait is not None:
            timeout = wait * (1 + BLOCKING_SLACK) + READ_MARGIN
        response = self._request("GET", path, query, None, timeout)
        if use_stale and response.last_contact_ms > self.max_stale * 1000:
            # Too stale: ask the leader (consul-template's max_stale rule).
            del query["stale"]
            response = self._request("GET", path, query, None, timeout)
        return response

    def put(self, path: str, body: Any = None, params: Mapping[str, str] | None = None) -> Any:
        """PUT ``path`` with ``body`` (JSON, or bytes as they are); the decoded answer."""
        return self._request("PUT", path, dict(params or {}), body, self.timeout).data

    def delete(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._request("DELETE", path, dict(params or {}), None, self.timeout).data

    def _request(
        self, method: str, path: str, query: dict[str, str], body: Any, timeout: float
    ) -> Response:
        url = quote(path, safe="/:@!$&'()*+,;=-._~")
        if query:
            # Flags such as ``stale`` go without a value, as Consul's documentation writes them.
            url += "?" + "&".join(
                quote(k, safe="") + (f"={quote(v, safe='')}" if v else "") for k, v in query.items()
            )
        payload: bytes | None = None
        if isinstance(body, bytes):
            payload = body
        elif body is not None:
            payload = json.dumps(body).encode()
        try:
            resp = self.pool.urlopen(
                method,
                url,
                body=payload,
                headers=self.headers,
                timeout=urllib3.Timeout(connect=self.timeout, read=timeout),
                preload_content=True,
                decode_content=True,
            )
        except HTTPError as exc:
            self.stats.count(ok=False)
            raise ConsulUnavailable(describe(exc)) from exc
        except OSError as exc:  # e.g. a CA file that went away: ssl.SSLError, FileNotFoundError
            self.stats.count(ok=False)
            raise ConsulUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if resp.status >= 400:
            self.stats.count(ok=False)
            text = resp.data.decode(errors="replace").strip()[:200]
            raise ConsulHTTPError(
                resp.status,
                f"HTTP {resp.status} for {path}: {text}",
                _int_header(resp.headers.get("X-Consul-Index")),
            )
        self.stats.count(ok=True)
        try:
            data = json.loads(resp.data) if resp.data else None
        except ValueError as exc:
            raise ConsulHTTPError(resp.status, f"{path}: answer is not JSON ({exc})") from exc
        return Response(
            data=data,
            index=_int_header(resp.headers.get("X-Consul-Index")),
            last_contact_ms=_int_header(resp.headers.get("X-Consul-LastContact")),
        )

    def close(self) -> None:
        self.pool.close()


def _int_header(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() else 0


def describe(exc: BaseException) -> str:
    """The class and root cause of a transport error, without the URL and connection
    objects urllib3 puts in its messages."""
    root: BaseException = exc
    seen = {id(root)}
    while True:
        nxt = getattr(root, "reason", None) or root.__cause__ or root.__context__
        if not isinstance(nxt, BaseException) or id(nxt) in seen:
            break
        seen.add(id(nxt))
        root = nxt
    text = str(root).split("): ")[-1].split("] ")[-1][:160]
    return f"{type(root).__name__}: {text}" if text else type(root).__name__

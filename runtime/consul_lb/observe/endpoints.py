"""The runtime's HTTP endpoints, behind HAProxy's stats port.

A small HTTP server in daemon threads, bound to 127.0.0.1 only; HAProxy's stats
frontend routes ``/metrics``, ``/metrics/runtime``, ``/_consul_lb/state`` and
``/_haproxy_getconfig`` to it, so users see one port (the stats port, 4444).

``/metrics`` is the runtime's figures followed by HAProxy's own exporter output, fetched
from ``/metrics/haproxy`` on the stats port (served by HAProxy itself): one scrape target
and one path, which is all that most service discovery (one ``metrics_path`` per target)
can express. Both halves are Prometheus text format 0.0.4 with disjoint names
(``consul_lb_*``, ``haproxy_*``), so appending one to the other is a valid exposition.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from consul_lb.acme.challenges import PATH_PREFIX as ACME_CHALLENGE
from consul_lb.observe.metrics import Figures, exposition, gauge_text

log = logging.getLogger("observe")

# HAProxy's exporter, on the stats frontend (see templates/haproxy.cfg.j2).
HAPROXY_METRICS_PATH = "/metrics/haproxy"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
TEXT = "text/plain; charset=utf-8"
REDACTED = "<redacted>"


@dataclass
class Sources:
    """Where each answer comes from (plain callables: manager/report.py's, or test
    data)."""

    figures: Callable[[], Figures]
    state: Callable[[], dict[str, Any]]
    config_file: Path
    secrets: Callable[[], list[str]]
    haproxy_metrics: tuple[str, int] | None = None  # the stats frontend (host, port)
    haproxy_auth: tuple[str, str] | None = None  # HAPROXY_STATS_USER and its password
    # ACME's HTTP-01 answers: token -> key authorization (routed from the http frontend).
    acme_challenge: Callable[[str], str | None] | None = None


class Observer:
    """The content of each endpoint, independent of HTTP."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def redact(self, body: bytes) -> bytes:
        """No answer may contain a secret (the Consul token), whatever puts it there."""
        for secret in self.sources.secrets():
            if len(secret) >= 8:
                body = body.replace(secret.encode(), REDACTED.encode())
        return body

    def runtime_metrics(self) -> bytes:
        return exposition(self.sources.figures)

    def metrics(self, query: str = "") -> bytes:
        """The runtime's metrics, then HAProxy's exporter output (``query`` is passed on:
        HAProxy's exporter understands ``scope=`` and ``no-maint``)."""
        ours = self.runtime_metrics()
        if self.sources.haproxy_metrics is None:
            return ours
        theirs = self.fetch_haproxy_metrics(query)
        up = gauge_text(
            "consul_lb_haproxy_exporter_up",
            "Whether HAProxy's exporter answered for this scrape (its figures follow)",
            0 if theirs is None else 1,
        )
        return ours + up + (theirs or b"")

    def fetch_haproxy_metrics(self, query: str) -> bytes | None:
        assert self.sources.haproxy_metrics is not None
        host, port = self.sources.haproxy_metrics
        # http.client, not urllib: no HTTP_PROXY variable may send this elsewhere.
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            headers = {}
            if self.sources.haproxy_auth is not None:
                token = base64.b64encode(":".join(self.sources.haproxy_auth).encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            conn.request(
                "GET", HAPROXY_METRICS_PATH + (f"?{query}" if query else ""), headers=headers
            )
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            log.debug("HAProxy's exporter did not answer: %s", exc)
            return None
        finally:
            conn.close()
        return body if resp.status == HTTPStatus.OK else None

    def answer(self, path: str, query: str = "") -> tuple[HTTPStatus, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE, self.redact(self.metrics(query))
        if path == "/metrics/runtime":
            return HTTPStatus.OK, CONTENT_TYPE, self.redact(self.runtime_metrics())
        if path == "/_consul_lb/state":
            body = json.dumps(self.sources.state(), indent=2, sort_keys=True).encode() + b"\n"
            return HTTPStatus.OK, "application/json", self.redact(body)
        if path == "/_haproxy_getconfig":
            try:
                config = self.sources.config_file.read_bytes()
            except FileNotFoundError:
                return HTTPStatus.SERVICE_UNAVAILABLE, TEXT, b"no configuration installed yet\n"
            return HTTPStatus.OK, TEXT, self.redact(config)
        if path.startswith(ACME_CHALLENGE) and self.sources.acme_challenge is not None:
            found = self.sources.acme_challenge(path[len(ACME_CHALLENGE) :])
            if found is not None:
                return HTTPStatus.OK, "application/octet-stream", found.encode()
        return HTTPStatus.NOT_FOUND, TEXT, b"not found\n"


def handler(observer: Observer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "consul-lb"
        sys_version = ""

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            try:
                status, ctype, body = observer.answer(path, query)
            except Exception:
                # One broken endpoint must not take the server thread down.
                log.exception("error answering %s", path)
                status, ctype, body = (
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    TEXT,
                    b"internal error, see the runtime's log\n",
                )
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # HAProxy already logs each request on the stats frontend.
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


def start_server(
    observer: Observer, port: int, host: str = "127.0.0.1", poll_interval: float = 0.5
) -> ThreadingHTTPServer:
    """Listen on ``host:port`` (OSError when it cannot: the caller says which variable)."""
    server = ThreadingHTTPServer((host, port), handler(observer))
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, args=(poll_interval,), name="observe", daemon=True
    ).start()
    return server

"""What operators look at: Prometheus metrics, the runtime's state and the running config.

A small HTTP server in a daemon thread, bound to 127.0.0.1 only; HAProxy's stats
frontend routes ``/metrics``, ``/metrics/runtime``, ``/_consul_lb/state`` and
``/_haproxy_getconfig`` to it, so users see one port (the stats port, 4444).

The metrics are pulled, not pushed: a Collector reads the applier's and the watcher's
counters when Prometheus scrapes, so the apply and watch code stays free of metric
calls and the figures cannot drift from the counters that state.json shows.

``/metrics`` is the runtime's figures followed by HAProxy's own exporter output, fetched
from ``/metrics/haproxy`` on the stats port (served by HAProxy itself): one scrape target
and one path, which is all that most service discovery (one ``metrics_path`` per target)
can express. Both halves are Prometheus text format 0.0.4 with disjoint names
(``consul_lb_*``, ``haproxy_*``), so appending one to the other is a valid exposition.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from consul_lb import __version__, model
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.process import socket_command

log = logging.getLogger("observe")

PORT_ENV = "HAPROXY_RUNTIME_PORT"
# Also the default of "${HAPROXY_RUNTIME_PORT-4445}" in templates/haproxy.cfg.j2: HAProxy
# is the runtime's child and expands the same variable, so both always agree.
DEFAULT_PORT = 4445
# HAProxy's exporter, on the stats frontend (see templates/haproxy.cfg.j2).
HAPROXY_METRICS_PATH = "/metrics/haproxy"
# HAProxy's exporter writes text format 0.0.4; the runtime's half is written in the same
# format so that the two can be concatenated.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
TEXT = "text/plain; charset=utf-8"
REDACTED = "<redacted>"


class HaproxyLike(Protocol):
    @property
    def strategy(self) -> str: ...

    @property
    def restarts(self) -> int: ...


class SettingsLike(Protocol):
    @property
    def stats_port(self) -> int: ...


class ApplierLike(Protocol):
    """What is read from consul_lb.manager.applier.Applier (a Protocol: no import cycle, and
    the unit tests pass plain fakes)."""

    @property
    def settings(self) -> SettingsLike: ...

    @property
    def haproxy(self) -> HaproxyLike: ...

    @property
    def applied(self) -> model.LoadBalancer | None: ...

    @property
    def reloads(self) -> int: ...

    @property
    def failed_reloads(self) -> int: ...

    @property
    def failed_validations(self) -> int: ...

    @property
    def renders(self) -> int: ...

    @property
    def last_render_seconds(self) -> float: ...

    def state(self) -> dict[str, Any]: ...


class StatsLike(Protocol):
    @property
    def requests(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def last_success(self) -> float: ...


class OutageLike(Protocol):
    @property
    def since(self) -> float | None: ...


class ConsulLike(Protocol):
    @property
    def token(self) -> str | None: ...


class WatcherLike(Protocol):
    """What is read from consul_lb.consul.watch.CatalogWatcher."""

    @property
    def stats(self) -> StatsLike: ...

    @property
    def outage(self) -> OutageLike: ...

    @property
    def config(self) -> ConsulLike: ...


def runtime_port(env: Mapping[str, str]) -> int:
    raw = env.get(PORT_ENV, "") or str(DEFAULT_PORT)
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{PORT_ENV}: expected a port number 1..65535, got {raw!r}")
    return int(raw)


class RuntimeCollector(Collector):
    """The runtime's metrics, read from the applier and the watcher at scrape time."""

    def __init__(self, applier: ApplierLike, watcher: WatcherLike) -> None:
        self.applier = applier
        self.watcher = watcher

    def collect(self) -> Iterator[Metric]:
        a = self.applier
        strategy = a.haproxy.strategy
        info = GaugeMetricFamily(
            "consul_lb_info",
            "consul-lb version and reload strategy",
            labels=["version", "strategy"],
        )
        info.add_metric([__version__, strategy], 1)
        yield info

        reloads = CounterMetricFamily(
            "consul_lb_reloads",
            "HAProxy reloads (not counting its first start), by strategy and result",
            labels=["strategy", "result"],
        )
        failed = a.failed_reloads
        reloads.add_metric([strategy, "success"], max(0, a.reloads - failed))
        reloads.add_metric([strategy, "failure"], failed)
        yield reloads

        changes = CounterMetricFamily(
            "consul_lb_changes_applied",
            "Configuration changes applied, by path: HAProxy's runtime API (no reload) or a reload",
            labels=["path"],
        )
        # getattr: counted by the runtime-API code, which older appliers do not have.
        changes.add_metric(["runtime_api"], int(getattr(a, "runtime_api_changes", 0)))
        changes.add_metric(["reload"], int(getattr(a, "reload_changes", 0)))
        yield changes

        yield CounterMetricFamily(
            "consul_lb_failed_validations",
            "Rendered configurations that haproxy -c rejected (never installed)",
            value=a.failed_validations,
        )
        yield CounterMetricFamily(
            "consul_lb_renders", "Configurations rendered from the catalog", value=a.renders
        )
        yield GaugeMetricFamily(
            "consul_lb_render_duration_seconds",
            "How long the last render took (model, port probe and template)",
            value=a.last_render_seconds,
        )
        yield CounterMetricFamily(
            "consul_lb_haproxy_restarts",
            "Times HAProxy exited on its own and was restarted",
            value=a.haproxy.restarts,
        )

        stats = self.watcher.stats
        # One consistent reading when the stats carry their lock (WatchStats).
        lock = getattr(stats, "lock", None) or threading.Lock()
        with lock:
            requests, errors, last_success = stats.requests, stats.errors, stats.last_success
        yield CounterMetricFamily(
            "consul_lb_consul_requests", "Requests made to Consul", value=requests
        )
        yield CounterMetricFamily(
            "consul_lb_consul_request_errors",
            "Requests to Consul that failed (unreachable, timeout, error status)",
            value=errors,
        )
        yield GaugeMetricFamily(
            "consul_lb_consul_last_success_timestamp_seconds",
            "Unix time of the last successful request to Consul (0: none yet)",
            value=last_success,
        )
        yield GaugeMetricFamily(
            "consul_lb_consul_up",
            "0 while Consul is unreachable (HAProxy keeps the last good configuration), else 1",
            value=0 if self.watcher.outage.since is not None else 1,
        )

        lb = a.applied
        backends = lb.backends if lb else ()
        yield GaugeMetricFamily(
            "consul_lb_services_published", "Services HAProxy serves now", value=len(backends)
        )
        yield GaugeMetricFamily(
            "consul_lb_servers_published",
            "Servers (passing instances) HAProxy serves now",
            value=sum(len(b.servers) for b in backends),
        )
        yield GaugeMetricFamily(
            "consul_lb_services_skipped",
            "Services tagged for HAProxy but left out for bad input (see /_consul_lb/state)",
            value=len(lb.skipped) if lb else 0,
        )


class _Fixed:
    """A registry-like object for generate_latest() over metrics built on the fly."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self.metrics


class Observer:
    """The content of each endpoint, independent of HTTP (unit-testable)."""

    def __init__(
        self,
        applier: ApplierLike,
        watcher: WatcherLike,
        paths: Paths,
        haproxy_metrics: tuple[str, int] | None = None,
    ) -> None:
        self.applier = applier
        self.watcher = watcher
        self.paths = paths
        # Where HAProxy's exporter answers: the stats frontend (host, port).
        self.haproxy_metrics = haproxy_metrics
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RuntimeCollector(applier, watcher))

    def secrets(self) -> list[str]:
        """Strings no answer may contain. Nothing puts the token in an answer today; this
        keeps it so if a later change does (a setting, an error message)."""
        token = self.watcher.config.token
        return [token] if token and len(token) >= 8 else []

    def redact(self, body: bytes) -> bytes:
        for secret in self.secrets():
            body = body.replace(secret.encode(), REDACTED.encode())
        return body

    def runtime_metrics(self) -> bytes:
        return generate_latest(self.registry)

    def metrics(self, query: str = "") -> bytes:
        """The runtime's metrics, then HAProxy's exporter output (``query`` is passed on:
        HAProxy's exporter understands ``scope=`` and ``no-maint``)."""
        ours = self.runtime_metrics()
        if self.haproxy_metrics is None:
            return ours
        theirs = self.fetch_haproxy_metrics(query)
        gauge = GaugeMetricFamily(
            "consul_lb_haproxy_exporter_up",
            "Whether HAProxy's exporter answered for this scrape (its figures follow)",
            value=0 if theirs is None else 1,
        )
        return ours + generate_latest(_Fixed([gauge])) + (theirs or b"")

    def fetch_haproxy_metrics(self, query: str) -> bytes | None:
        assert self.haproxy_metrics is not None
        host, port = self.haproxy_metrics
        # http.client, not urllib: no HTTP_PROXY variable may send this elsewhere.
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", HAPROXY_METRICS_PATH + (f"?{query}" if query else ""))
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            log.debug("HAProxy's exporter did not answer: %s", exc)
            return None
        finally:
            conn.close()
        if resp.status != HTTPStatus.OK:
            log.debug("HAProxy's exporter answered %d", resp.status)
            return None
        return body

    def state(self) -> dict[str, Any]:
        """The applier's state (as in state.json), with Consul's and HAProxy's side."""
        stats, since = self.watcher.stats, self.watcher.outage.since
        state = self.applier.state()
        if "updated" in state:
            # The applier stamps its state when it writes state.json (after each apply);
            # here that is when it was last written, not the time of this request.
            try:
                state["updated"] = (self.paths.state_dir / "state.json").stat().st_mtime
            except FileNotFoundError:
                state["updated"] = None
        state["consul"] = {
            "requests": stats.requests,
            "errors": stats.errors,
            "last_success": stats.last_success or None,
            # Outage.since is monotonic; say it as wall-clock time.
            "unreachable_since": None
            if since is None
            else time.time() - (time.monotonic() - since),
        }
        state["last_sync"] = stats.last_success or None
        state["last_reload"] = self.haproxy_started()
        return state

    def haproxy_started(self) -> float | None:
        """When the running HAProxy worker started: the last reload, or the first start
        (each reload starts a new worker or process, whatever the strategy)."""
        try:
            info = socket_command(str(self.paths.admin_socket), "show info", timeout=2)
        except OSError:
            return None
        for line in info.splitlines():
            name, _, value = line.partition(":")
            if name == "Start_time_sec" and value.strip().isdigit():
                return float(value.strip())
        return None

    def config(self) -> bytes | None:
        """The installed haproxy.cfg, byte for byte (what HAProxy runs, or is about to)."""
        try:
            return self.paths.config.read_bytes()
        except FileNotFoundError:
            return None

    def answer(self, path: str, query: str = "") -> tuple[HTTPStatus, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE, self.redact(self.metrics(query))
        if path == "/metrics/runtime":
            return HTTPStatus.OK, CONTENT_TYPE, self.redact(self.runtime_metrics())
        if path == "/_consul_lb/state":
            body = json.dumps(self.state(), indent=2, sort_keys=True).encode() + b"\n"
            return HTTPStatus.OK, "application/json", self.redact(body)
        if path == "/_haproxy_getconfig":
            config = self.config()
            if config is None:
                return HTTPStatus.SERVICE_UNAVAILABLE, TEXT, b"no configuration installed yet\n"
            return HTTPStatus.OK, TEXT, self.redact(config)
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
    server = ThreadingHTTPServer((host, port), handler(observer))
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, args=(poll_interval,), name="observe", daemon=True
    ).start()
    return server


def serve(
    applier: ApplierLike,
    watcher: WatcherLike,
    paths: Paths,
    env: Mapping[str, str] = os.environ,
) -> ThreadingHTTPServer | None:
    """Start the endpoints for HAProxy mode. A bad HAPROXY_RUNTIME_PORT stops the start
    (HAProxy's configuration uses the same variable and would be rejected); a port that
    is taken only loses the endpoints: the load balancer itself keeps working."""
    try:
        port = runtime_port(env)
    except ValueError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    observer = Observer(applier, watcher, paths, ("127.0.0.1", applier.settings.stats_port))
    try:
        server = start_server(observer, port)
    except OSError as exc:
        log.error(
            "cannot listen on 127.0.0.1:%d (%s): /metrics, /_consul_lb/state and "
            "/_haproxy_getconfig will answer 503; set %s to a free port",
            port,
            exc.strerror,
            PORT_ENV,
        )
        return None
    log.info("metrics and state endpoints on 127.0.0.1:%d, behind the stats port", port)
    return server

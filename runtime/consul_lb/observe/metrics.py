"""The runtime's Prometheus metrics, read at scrape time from a ``Figures`` snapshot.

The metrics are pulled, not pushed: the runner fills a Figures when Prometheus scrapes,
so the apply and watch code stays free of metric calls and the figures cannot drift
from the counters that state.json shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from consul_lb import __version__
from consul_lb.manager.counters import Counters


@dataclass
class WatchFigures:
    name: str
    last_success: float  # Unix time, 0: never
    errors: int


@dataclass
class Figures:
    """Everything /metrics says of the runtime, at one instant."""

    strategy: str
    counters: Counters = field(default_factory=Counters)  # the applier's, copied
    haproxy_restarts: int = 0
    consul_requests: int = 0
    consul_errors: int = 0
    consul_connections: int = 0
    consul_up: bool = True
    consul_last_success: float = 0.0
    services_published: int = 0
    servers_published: int = 0
    services_skipped: int = 0
    waiting: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    watches: list[WatchFigures] = field(default_factory=list)
    certificates: list[tuple[str, float]] = field(default_factory=list)  # (name, not after)
    certificates_skipped: int = 0
    # Orders this load balancer made, by result (None: ACME off); next renewal per certificate.
    acme_orders: dict[str, int] | None = None
    acme_renewals: list[tuple[str, float]] = field(default_factory=list)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class RuntimeCollector(Collector):
    def __init__(self, figures: Callable[[], Figures]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self.figures()
        c = f.counters
        info = GaugeMetricFamily(
            "consul_lb_info",
            "consul-lb version and reload strategy",
            labels=["version", "strategy"],
        )
        info.add_metric([__version__, f.strategy], 1)
        yield info
        reloads = CounterMetricFamily(
            "consul_lb_reloads",
            "HAProxy reloads (not counting its first start), by strategy and result",
            labels=["strategy", "result"],
        )
        reloads.add_metric([f.strategy, "success"], max(0, c.reloads - c.failed_reloads))
        reloads.add_metric([f.strategy, "failure"], c.failed_reloads)
        yield reloads
        changes = CounterMetricFamily(
            "consul_lb_changes_applied",
            "Configuration changes applied, by path: HAProxy's runtime API (no reload) or a reload",
            labels=["path"],
        )
        changes.add_metric(["runtime_api"], c.runtime_api_changes)
        changes.add_metric(["reload"], c.reload_changes)
        yield changes
        yield _counter(
            "consul_lb_runtime_api_fallbacks",
            "Runtime-API changes that failed and were applied by a reload instead",
            c.runtime_api_fallbacks,
        )
        yield _counter(
            "consul_lb_failed_validations",
            "Rendered configurations that could not be rendered or that haproxy -c rejected "
            "(never installed as they were)",
            c.failed_validations,
        )
        errors = CounterMetricFamily(
            "consul_lb_errors",
            "Unexpected failures contained by the runtime, by stage (the change is retried)",
            labels=["stage"],
        )
        for stage in sorted({"apply", "event", "restart", *f.errors}):
            errors.add_metric([stage], f.errors.get(stage, 0))
        yield errors
        yield _counter("consul_lb_renders", "Configurations rendered from the catalog", c.renders)
        yield _gauge(
            "consul_lb_render_duration_seconds",
            "How long the last render took (model, port probe and template)",
            c.last_render_seconds,
        )
        yield _counter(
            "consul_lb_haproxy_restarts",
            "Times HAProxy exited on its own and was restarted",
            f.haproxy_restarts,
        )
        yield _counter("consul_lb_consul_requests", "Requests made to Consul", f.consul_requests)
        yield _counter(
            "consul_lb_consul_request_errors",
            "Requests to Consul that failed (unreachable, timeout, error status)",
            f.consul_errors,
        )
        yield _gauge(
            "consul_lb_consul_connections_opened",
            "HTTP connections opened to Consul so far (at most CONSUL_LB_MAX_CONNS are kept)",
            f.consul_connections,
        )
        yield _gauge(
            "consul_lb_consul_last_success_timestamp_seconds",
            "Unix time of the last successful request to Consul (0: none yet)",
            f.consul_last_success,
        )
        yield _gauge(
            "consul_lb_consul_up",
            "0 while Consul is unreachable (HAProxy keeps the last good configuration), else 1",
            1 if f.consul_up else 0,
        )
        watch_ok = GaugeMetricFamily(
            "consul_lb_watch_last_success_timestamp_seconds",
            "Unix time each watch last got an answer from Consul (0: never)",
            labels=["watch"],
        )
        watch_errors = CounterMetricFamily(
            "consul_lb_watch_errors", "Failed requests of each watch", labels=["watch"]
        )
        for w in f.watches:
            watch_ok.add_metric([w.name], w.last_success)
            watch_errors.add_metric([w.name], w.errors)
        yield watch_ok
        yield watch_errors
        yield _gauge(
            "consul_lb_waiting",
            "1 until the first complete read of Consul (the health URI answers 503), else 0",
            1 if f.waiting else 0,
        )
        yield _gauge(
            "consul_lb_services_published", "Services HAProxy serves now", f.services_published
        )
        yield _gauge(
            "consul_lb_servers_published",
            "Servers (passing instances) HAProxy serves now",
            f.servers_published,
        )
        yield _gauge(
            "consul_lb_services_skipped",
            "Services tagged for HAProxy but left out for bad input (see /_consul_lb/state)",
            f.services_skipped,
        )
        expiry = GaugeMetricFamily(
            "consul_lb_certificate_expiry_timestamp_seconds",
            "Unix time each certificate served on the https frontend expires",
            labels=["name"],
        )
        for name, not_after in f.certificates:
            expiry.add_metric([name], not_after)
        yield expiry
        yield _gauge(
            "consul_lb_certificates_skipped",
            "Certificate bundles not served for bad input (the reasons are in /_consul_lb/state)",
            f.certificates_skipped,
        )
        if f.acme_orders is not None:
            yield from _acme(f)


def _acme(f: Figures) -> Iterator[Metric]:
    orders = CounterMetricFamily(
        "consul_lb_acme_orders",
        "ACME orders this load balancer made, by result (issued, failed)",
        labels=["result"],
    )
    for result in ("issued", "failed"):
        orders.add_metric([result], (f.acme_orders or {}).get(result, 0))
    yield orders
    renewal = GaugeMetricFamily(
        "consul_lb_acme_renewal_timestamp_seconds",
        "Unix time each ACME certificate is due for renewal (by whichever load balancer)",
        labels=["name"],
    )
    for name, when in f.acme_renewals:
        renewal.add_metric([name], when)
    yield renewal


def exposition(figures: Callable[[], Figures]) -> bytes:
    """Prometheus text format 0.0.4 of the runtime's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(figures))
    return generate_latest(registry)


def gauge_text(name: str, doc: str, value: float) -> bytes:
    """One gauge in text format (for figures computed while answering a scrape)."""

    class One:
        def collect(self) -> list[Metric]:
            return [_gauge(name, doc, value)]

    return generate_latest(One())

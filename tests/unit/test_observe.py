"""consul_lb.observe without containers: the collector's figures for a fake applier and
watcher, the endpoints over a real loopback HTTP server, and the template's routing."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from consul_lb import observe
from consul_lb.consul.catalog import Catalog
from consul_lb.consul.watch import Outage, WatchStats
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import fit
from consul_lb.model import Backend, LoadBalancer, Server, Skipped
from consul_lb.model import build as build_lb
from consul_lb.render import environment, render_haproxy
from consul_lb.settings import from_env
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "0b5f2a8e-secret-token-4d1c"
ON = "HAPROXY.ENABLE=true"


@dataclass
class FakeSettings:
    stats_port: int = 4444


@dataclass
class FakeHaproxy:
    strategy: str = "seamless"
    restarts: int = 0


@dataclass
class FakeApplier:
    """The attributes consul_lb.manager.applier.Applier has (and the runtime-API ones it may
    have), with made-up values."""

    settings: FakeSettings = field(default_factory=FakeSettings)
    haproxy: FakeHaproxy = field(default_factory=FakeHaproxy)
    applied: LoadBalancer | None = None
    reloads: int = 0
    failed_reloads: int = 0
    failed_validations: int = 0
    renders: int = 0
    last_render_seconds: float = 0.0

    def state(self) -> dict[str, Any]:
        lb = self.applied
        return {
            "strategy": self.haproxy.strategy,
            "reloads": self.reloads,
            "updated": 123.0,
            "services": [b.service for b in lb.backends] if lb else [],
            "skipped": [{"service": s.service, "reason": s.reason} for s in lb.skipped]
            if lb
            else [],
        }


@dataclass
class FakeConsul:
    token: str | None = TOKEN


@dataclass
class FakeWatcher:
    stats: WatchStats = field(default_factory=WatchStats)
    outage: Outage = field(default_factory=lambda: Outage("consul:8500"))
    config: FakeConsul = field(default_factory=FakeConsul)


def backend(service: str, servers: int, protocol: str = "http") -> Backend:
    return Backend(
        service=service,
        name=f"{service}.example.com",
        protocol=protocol,
        balance="roundrobin",
        maxconn=None,
        frontend_port=9000 if protocol == "tcp" else None,
        servers=tuple(Server(f"{service}-{i}", f"10.0.0.{i}", 8000) for i in range(servers)),
    )


LB = LoadBalancer(
    (backend("api", 2), backend("db", 1, "tcp"), backend("www", 3)),
    (Skipped("Bad_Name", "not a DNS label"),),
)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path)


def test_collector_reads_the_counters_at_scrape_time(paths: Paths) -> None:
    applier = FakeApplier(haproxy=FakeHaproxy("syn-drop", restarts=1))
    watcher = FakeWatcher()
    obs = observe.Observer(applier, watcher, paths)
    before = obs.runtime_metrics()
    assert value(before, "consul_lb_services_published") == 0
    assert value(before, "consul_lb_consul_up") == 1
    assert value(before, "consul_lb_reloads_total", strategy="syn-drop", result="success") == 0

    applier.applied = LB
    applier.reloads, applier.failed_reloads, applier.failed_validations = 5, 2, 1
    applier.renders, applier.last_render_seconds = 9, 0.025
    watcher.stats.count(ok=True)
    watcher.stats.count(ok=True)
    watcher.stats.count(ok=False)
    watcher.outage.failed(OSError("refused"))
    after = obs.runtime_metrics()
    assert value(after, "consul_lb_reloads_total", strategy="syn-drop", result="success") == 3
    assert value(after, "consul_lb_reloads_total", strategy="syn-drop", result="failure") == 2
    assert value(after, "consul_lb_failed_validations_total") == 1
    assert value(after, "consul_lb_renders_total") == 9
    assert value(after, "consul_lb_render_duration_seconds") == 0.025
    assert value(after, "consul_lb_haproxy_restarts_total") == 1
    assert value(after, "consul_lb_consul_requests_total") == 3
    assert value(after, "consul_lb_consul_request_errors_total") == 1
    assert value(after, "consul_lb_consul_last_success_timestamp_seconds") == pytest.approx(
        watcher.stats.last_success
    )
    assert value(after, "consul_lb_consul_up") == 0
    assert value(after, "consul_lb_services_published") == 3
    assert value(after, "consul_lb_servers_published") == 6
    assert value(after, "consul_lb_services_skipped") == 1
    info = [k for k in samples(after) if k[0] == "consul_lb_info"]
    assert len(info) == 1 and ("strategy", "syn-drop") in info[0][1]


def test_changes_by_path_before_and_after_the_runtime_api_counters_exist(paths: Paths) -> None:
    applier = FakeApplier()
    obs = observe.Observer(applier, FakeWatcher(), paths)
    text = obs.runtime_metrics()
    assert value(text, "consul_lb_changes_applied_total", path="runtime_api") == 0
    assert value(text, "consul_lb_changes_applied_total", path="reload") == 0
    applier.runtime_api_changes = 7  # type: ignore[attr-defined]
    applier.reload_changes = 2  # type: ignore[attr-defined]
    text = obs.runtime_metrics()
    assert value(text, "consul_lb_changes_applied_total", path="runtime_api") == 7
    assert value(text, "consul_lb_changes_applied_total", path="reload") == 2


def test_every_runtime_metric_is_prefixed_and_documented(paths: Paths) -> None:
    text = observe.Observer(FakeApplier(applied=LB), FakeWatcher(), paths).runtime_metrics()
    families = list(text_string_to_metric_families(text.decode()))
    assert families
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for family in families:
        assert family.name.startswith("consul_lb_")
        assert family.documentation
        assert f"`{family.name}" in readme, f"{family.name} is not in the README"


class FakeExporter(BaseHTTPRequestHandler):
    """Stands for HAProxy's /metrics/haproxy."""

    queries: list[str] = []  # noqa: RUF012 (shared on purpose: read by the test)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        FakeExporter.queries.append(query)
        body = b"# HELP haproxy_process_nbthread Threads\n# TYPE haproxy_process_nbthread gauge\n"
        body += b"haproxy_process_nbthread 2\n"
        self.send_response(200 if path == observe.HAPROXY_METRICS_PATH else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeExporter)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_appends_haproxys_exporter(paths: Paths, exporter: int) -> None:
    obs = observe.Observer(FakeApplier(applied=LB), FakeWatcher(), paths, ("127.0.0.1", exporter))
    text = obs.metrics("scope=backend")
    assert value(text, "haproxy_process_nbthread") == 2
    assert value(text, "consul_lb_haproxy_exporter_up") == 1
    assert value(text, "consul_lb_services_published") == 3
    assert FakeExporter.queries[-1] == "scope=backend"


def test_metrics_without_haproxy_still_has_the_runtimes(paths: Paths) -> None:
    obs = observe.Observer(FakeApplier(), FakeWatcher(), paths, ("127.0.0.1", free_port()))
    text = obs.metrics()
    assert value(text, "consul_lb_haproxy_exporter_up") == 0
    assert value(text, "consul_lb_services_published") == 0
    assert not any(name.startswith("haproxy_") for name, _ in samples(text))


@pytest.fixture
def server(paths: Paths, exporter: int) -> Iterator[tuple[int, FakeApplier, FakeWatcher]]:
    applier, watcher = FakeApplier(applied=LB), FakeWatcher()
    obs = observe.Observer(applier, watcher, paths, ("127.0.0.1", exporter))
    srv = observe.start_server(obs, 0, poll_interval=0.01)
    yield int(srv.server_address[1]), applier, watcher
    srv.shutdown()
    srv.server_close()


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def test_config_endpoint_returns_the_installed_file_byte_for_byte(
    paths: Paths, server: tuple[int, FakeApplier, FakeWatcher]
) -> None:
    port = server[0]
    status, _, _ = get(port, "/_haproxy_getconfig")
    assert status == 503  # nothing installed yet
    paths.live.mkdir(parents=True)
    text = "global\n    maxconn 100\n\n# trailing spaces  \n\tand tabs\n"
    paths.config.write_text(text)
    status, ctype, body = get(port, "/_haproxy_getconfig")
    assert (status, body) == (200, text.encode())
    assert ctype.startswith("text/plain")


def test_state_endpoint_lists_published_and_skipped_services(
    server: tuple[int, FakeApplier, FakeWatcher],
) -> None:
    port, _, watcher = server
    watcher.stats.count(ok=True)
    status, ctype, body = get(port, "/_consul_lb/state")
    assert (status, ctype) == (200, "application/json")
    state = json.loads(body)
    assert state["services"] == ["api", "db", "www"]
    assert state["skipped"] == [{"service": "Bad_Name", "reason": "not a DNS label"}]
    assert state["last_sync"] == pytest.approx(watcher.stats.last_success)
    assert state["consul"]["requests"] == 1
    assert state["consul"]["unreachable_since"] is None
    assert state["last_reload"] is None  # no HAProxy admin socket here
    assert state["updated"] is None  # no state.json written yet


def test_state_updated_is_when_state_json_was_written(paths: Paths) -> None:
    (paths.state_dir / "state.json").write_text("{}")
    obs = observe.Observer(FakeApplier(), FakeWatcher(), paths)
    assert obs.state()["updated"] == (paths.state_dir / "state.json").stat().st_mtime


def test_metric_endpoints_over_http(server: tuple[int, FakeApplier, FakeWatcher]) -> None:
    port = server[0]
    status, ctype, body = get(port, "/metrics")
    assert status == 200 and "version=0.0.4" in ctype
    assert value(body, "haproxy_process_nbthread") == 2
    assert value(body, "consul_lb_servers_published") == 6
    status, _, body = get(port, "/metrics/runtime")
    assert status == 200
    assert value(body, "consul_lb_servers_published") == 6
    assert "haproxy_process_nbthread" not in body.decode()


@pytest.mark.parametrize("path", ["/", "/metricsx", "/_consul_lb", "/../etc/passwd", "/env"])
def test_other_paths_are_not_found(server: tuple[int, FakeApplier, FakeWatcher], path: str) -> None:
    assert get(server[0], path)[0] == 404


def test_the_token_is_redacted_from_every_answer(
    paths: Paths, server: tuple[int, FakeApplier, FakeWatcher]
) -> None:
    port, applier, _ = server
    # Were a later change to put the token in an answer, it would still not get out.
    applier.applied = LoadBalancer((), (Skipped("x", f"token {TOKEN} in a reason"),))
    paths.live.mkdir(parents=True)
    paths.config.write_text(f"# {TOKEN}\n")
    for path in ("/metrics", "/metrics/runtime", "/_consul_lb/state", "/_haproxy_getconfig"):
        status, _, body = get(port, path)
        assert status == 200, path
        assert TOKEN.encode() not in body, path
    assert observe.REDACTED.encode() in get(port, "/_consul_lb/state")[2]


def test_a_failing_endpoint_answers_500_and_the_server_keeps_serving(
    server: tuple[int, FakeApplier, FakeWatcher],
) -> None:
    port, applier, _ = server

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    applier.state = broken  # type: ignore[method-assign]
    assert get(port, "/_consul_lb/state")[0] == 500
    assert get(port, "/metrics/runtime")[0] == 200


def test_runtime_port_from_the_environment() -> None:
    assert observe.runtime_port({}) == observe.DEFAULT_PORT == 4445
    assert observe.runtime_port({"HAPROXY_RUNTIME_PORT": "5000"}) == 5000
    for bad in ("0", "65536", "x", "-1", " 80"):
        with pytest.raises(ValueError, match="HAPROXY_RUNTIME_PORT"):
            observe.runtime_port({"HAPROXY_RUNTIME_PORT": bad})


def test_serve_stops_on_a_bad_port_and_carries_on_when_it_is_taken(paths: Paths) -> None:
    with pytest.raises(SystemExit):
        observe.serve(FakeApplier(), FakeWatcher(), paths, {"HAPROXY_RUNTIME_PORT": "x"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"HAPROXY_RUNTIME_PORT": str(port)}
        assert observe.serve(FakeApplier(), FakeWatcher(), paths, env) is None


def test_the_template_routes_every_endpoint_to_the_runtime(paths: Paths) -> None:
    settings = from_env({"HAPROXY_DOM": "example.com"})
    lb, _ = build_lb(Catalog.build({"www": [ON]}, {}), settings)
    config = render_haproxy(
        lb,
        settings,
        fit(50000, 10000, nofile=20000),
        Paths(Path("/x")).template_paths(),
        environment([Path(__file__).resolve().parents[2] / "templates"]),
    ).config
    acl = re.search(r"^\s+acl runtime_endpoint path (.+)$", config, flags=re.M)
    assert acl is not None
    obs = observe.Observer(FakeApplier(), FakeWatcher(), paths)
    paths.live.mkdir(parents=True)
    paths.config.write_text(config)
    routed = acl.group(1).split()
    assert set(routed) == {
        "/metrics",
        "/metrics/runtime",
        "/_consul_lb/state",
        "/_haproxy_getconfig",
    }
    for path in routed:
        assert obs.answer(path)[0] == 200, path
    assert f"prometheus-exporter if {{ path {observe.HAPROXY_METRICS_PATH} }}" in config
    # The same default port on both sides of the loopback.
    assert f'"127.0.0.1:${{HAPROXY_RUNTIME_PORT-{observe.DEFAULT_PORT}}}"' in config

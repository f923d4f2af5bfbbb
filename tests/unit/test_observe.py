"""The runtime's endpoints without containers: the metrics a Figures gives, the endpoints
over a real loopback HTTP server, and the template's routing of them."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import fit
from consul_lb.manager.counters import Counters
from consul_lb.model import build
from consul_lb.observe.endpoints import (
    HAPROXY_METRICS_PATH,
    REDACTED,
    Observer,
    Sources,
    start_server,
)
from consul_lb.observe.metrics import Figures, WatchFigures, exposition
from consul_lb.render import Renderer
from consul_lb.settings import from_env
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "0b5f2a8e-secret-token-4d1c"
ON = "HAPROXY.ENABLE=true"
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


class Data:
    """What the runner would answer: plain values the tests change."""

    def __init__(self, tmp_path: Path) -> None:
        self.figures = Figures(strategy="seamless")
        self.state: dict[str, Any] = {"services": ["www"], "skipped": []}
        self.config = tmp_path / "live" / "haproxy.cfg"

    def sources(self, exporter: int | None = None) -> Sources:
        return Sources(
            figures=lambda: self.figures,
            state=lambda: self.state,
            config_file=self.config,
            secrets=lambda: [TOKEN],
            haproxy_metrics=("127.0.0.1", exporter) if exporter else None,
        )


@pytest.fixture
def data(tmp_path: Path) -> Data:
    return Data(tmp_path)


def test_metrics_are_read_at_scrape_time(data: Data) -> None:
    text = exposition(lambda: data.figures)
    assert value(text, "consul_lb_reloads_total", strategy="seamless", result="success") == 0
    data.figures = Figures(
        strategy="seamless",
        counters=Counters(reloads=7, failed_reloads=2, runtime_api_changes=5, reload_changes=4),
        consul_connections=3,
        services_published=3,
        servers_published=9,
        waiting=True,
        errors={"apply": 2},
        watches=[WatchFigures("services", 123.0, 4)],
    )
    text = exposition(lambda: data.figures)
    assert value(text, "consul_lb_reloads_total", strategy="seamless", result="success") == 5
    assert value(text, "consul_lb_reloads_total", strategy="seamless", result="failure") == 2
    assert value(text, "consul_lb_changes_applied_total", path="runtime_api") == 5
    assert value(text, "consul_lb_changes_applied_total", path="reload") == 4
    assert value(text, "consul_lb_errors_total", stage="apply") == 2
    assert value(text, "consul_lb_errors_total", stage="restart") == 0  # always present
    assert value(text, "consul_lb_watch_errors_total", watch="services") == 4
    assert value(text, "consul_lb_watch_last_success_timestamp_seconds", watch="services") == 123
    assert value(text, "consul_lb_consul_connections_opened") == 3
    assert value(text, "consul_lb_waiting") == 1
    assert value(text, "consul_lb_servers_published") == 9


def test_every_runtime_metric_is_prefixed_and_documented(data: Data) -> None:
    text = exposition(lambda: data.figures)
    families = list(text_string_to_metric_families(text.decode()))
    assert families
    for family in families:
        assert family.name.startswith("consul_lb_"), family.name
        assert family.documentation, family.name


class FakeExporter(BaseHTTPRequestHandler):
    """Stands for HAProxy's /metrics/haproxy (HAProxy serves it; here only its answer
    matters)."""

    queries: list[str] = []  # noqa: RUF012 (shared on purpose: read by the test)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        FakeExporter.queries.append(query)
        body = b"# HELP haproxy_process_nbthread Threads\n# TYPE haproxy_process_nbthread gauge\n"
        body += b"haproxy_process_nbthread 2\n"
        self.send_response(200 if path == HAPROXY_METRICS_PATH else 404)
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


def test_metrics_appends_haproxys_exporter(data: Data, exporter: int) -> None:
    data.figures = Figures(strategy="seamless", services_published=3)
    text = Observer(data.sources(exporter)).metrics("scope=backend")
    assert value(text, "haproxy_process_nbthread") == 2
    assert value(text, "consul_lb_haproxy_exporter_up") == 1
    assert value(text, "consul_lb_services_published") == 3
    assert FakeExporter.queries[-1] == "scope=backend"


def test_metrics_without_haproxy_still_has_the_runtimes(data: Data) -> None:
    text = Observer(data.sources(free_port())).metrics()
    assert value(text, "consul_lb_haproxy_exporter_up") == 0
    assert not any(name.startswith("haproxy_") for name, _ in samples(text))


@pytest.fixture
def server(data: Data, exporter: int) -> Iterator[int]:
    srv = start_server(Observer(data.sources(exporter)), 0, poll_interval=0.01)
    yield int(srv.server_address[1])
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


def test_config_endpoint_returns_the_installed_file_byte_for_byte(data: Data, server: int) -> None:
    assert get(server, "/_haproxy_getconfig")[0] == 503  # nothing installed yet
    data.config.parent.mkdir(parents=True)
    text = "global\n    maxconn 100\n\n# trailing spaces  \n\tand tabs\n"
    data.config.write_text(text)
    status, ctype, body = get(server, "/_haproxy_getconfig")
    assert (status, body) == (200, text.encode())
    assert ctype.startswith("text/plain")


def test_state_endpoint_is_the_runners_state(data: Data, server: int) -> None:
    data.state = {"services": ["a"], "waiting": "first complete read of Consul at x"}
    status, ctype, body = get(server, "/_consul_lb/state")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == data.state


@pytest.mark.parametrize("path", ["/", "/metrics/", "/_consul_lb", "/state.json", "/../etc"])
def test_other_paths_are_not_found(server: int, path: str) -> None:
    assert get(server, path)[0] == 404


def test_the_token_is_redacted_from_every_answer(data: Data, server: int) -> None:
    # Were a later change to put the token in an answer, it would still not get out.
    data.state = {"skipped": [{"service": "x", "reason": f"token {TOKEN} in a reason"}]}
    data.config.parent.mkdir(parents=True)
    data.config.write_text(f"# {TOKEN}\n")
    for path in ("/metrics", "/metrics/runtime", "/_consul_lb/state", "/_haproxy_getconfig"):
        status, _, body = get(server, path)
        assert status == 200, path
        assert TOKEN.encode() not in body, path
    assert REDACTED.encode() in get(server, "/_consul_lb/state")[2]


def test_a_failing_endpoint_answers_500_and_the_server_keeps_serving(tmp_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    sources = Data(tmp_path).sources()
    sources.state = broken
    srv = start_server(Observer(sources), 0, poll_interval=0.01)
    try:
        port = int(srv.server_address[1])
        assert get(port, "/_consul_lb/state")[0] == 500
        assert get(port, "/metrics/runtime")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_template_routes_every_endpoint_to_the_runtime(data: Data) -> None:
    settings = from_env({"HAPROXY_DOM": "example.com", "HAPROXY_RUNTIME_PORT": "9123"})
    www = Instance("n", "www-1", "10.0.0.1", 80, (ON,))
    lb, _ = build(Catalog.build({"www": [ON]}, {"www": [www]}), settings)
    paths = Paths(Path("/x")).template_paths()
    config = (
        Renderer(settings, paths, [TEMPLATES]).render(lb, fit(50000, 10000, nofile=20000)).config
    )
    acl = re.search(r"^\s+acl runtime_endpoint path (.+)$", config, flags=re.M)
    assert acl is not None
    routed = acl.group(1).split()
    assert set(routed) == {
        "/metrics",
        "/metrics/runtime",
        "/_consul_lb/state",
        "/_haproxy_getconfig",
    }
    data.config.parent.mkdir(parents=True)
    data.config.write_text(config)
    observer = Observer(data.sources())
    for path in routed:
        assert observer.answer(path)[0] == 200, path
    assert f"prometheus-exporter if {{ path {HAPROXY_METRICS_PATH} }}" in config
    # The port the runtime listens on, from the settings, held once.
    assert "server runtime 127.0.0.1:9123" in config

"""What the TLS tags and variables put into haproxy.cfg, checked with ``haproxy -c`` of
Debian's binary; TLS to instances that serve TLS themselves, through a real HAProxy."""

from __future__ import annotations

import dataclasses
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.haproxy.files import check
from consul_lb.model import build
from consul_lb.model.tags import TagError, parse_tags
from consul_lb.render import Renderer
from consul_lb.settings import from_env
from consul_lb.tls.certs import TlsView

from devtools.certs import Ca
from tests.unit.local_haproxy import Stack, catalog, make_stack, stop
from tests.unit.test_render import LIMITS, PATHS, TEMPLATES, block, render

DOM = {"HAPROXY_DOM": "example.com"}
ON = "HAPROXY.ENABLE=true"
WWW = [Instance("node-1", "www-1", "10.0.0.1", 8000)]
SERVING = TlsView(True, "www.pem", "/x/tls/certs.list")


def rendered(tags: list[str], env: dict[str, str] | None = None, view: TlsView = SERVING) -> str:
    settings = from_env({**DOM, **(env or {})})
    tagged = {"www": [dataclasses.replace(i, tags=tuple(sorted(tags))) for i in WWW]}
    lb, _ = build(Catalog.build({"www": tags}, tagged), settings)
    renderer = Renderer(settings, PATHS, [TEMPLATES])
    renderer.tls = view
    return renderer.render(lb, LIMITS).config


def test_without_certificates_nothing_of_tls_is_rendered() -> None:
    config = render({"www": [ON]}, {"www": WWW}).config
    assert "frontend https" not in config and "ssl" not in config


def test_the_https_frontend_routes_like_the_http_one() -> None:
    config = rendered([ON])
    https = block(config, "frontend https")
    lines = [ln for ln in https if not ln.startswith("#")]
    routing = [
        ln
        for ln in block(config, "frontend http")
        if ln.startswith(("http-request set-var", "use_backend"))
    ]
    assert routing  # the http frontend's own map lookups
    assert lines == [
        "bind :8443 ssl crt-list /x/tls/certs.list alpn h2,http/1.1",
        "option idle-close-on-response",
        "http-request del-header X-Forwarded-For",
        "http-request set-header X-Forwarded-Proto https",
        *routing,
    ]
    assert "# default certificate: www.pem" in https
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" in block(config, "global")


def test_tls_variables_reach_the_global_section() -> None:
    env = {
        "HAPROXY_TLS_MIN_VERSION": "TLSv1.3",
        "HAPROXY_TLS_CIPHERS": "ECDHE-RSA-AES256-GCM-SHA384",
        "HAPROXY_TLS_CIPHERSUITES": "TLS_AES_256_GCM_SHA384",
        "HAPROXY_HTTPS_PORT": "443",
    }
    config = rendered([ON], env)
    assert {
        "ssl-default-bind-ciphers ECDHE-RSA-AES256-GCM-SHA384",
        "ssl-default-bind-ciphersuites TLS_AES_256_GCM_SHA384",
        "ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets",
    } <= set(block(config, "global"))
    assert "bind :443 ssl crt-list /x/tls/certs.list alpn h2,http/1.1" in block(
        config, "frontend https"
    )


def test_trusted_proxies_keep_their_forwarded_headers() -> None:
    config = rendered([ON], {"HAPROXY_TRUSTED_PROXIES": "10.0.0.0/8,192.0.2.1"})
    for frontend, proto in (("frontend http", "http"), ("frontend https", "https")):
        lines = block(config, frontend)
        assert "acl from_trusted_proxy src 10.0.0.0/8 192.0.2.1/32" in lines
        assert "http-request del-header X-Forwarded-For unless from_trusted_proxy" in lines
        assert (
            f"http-request set-header X-Forwarded-Proto {proto} unless from_trusted_proxy "
            "{ req.hdr(x-forwarded-proto) -m found }"
        ) in lines


@pytest.mark.parametrize(("port", "suffix"), [("8443", ":8443"), ("443", "")])
def test_redirect_keeps_host_and_path_and_names_the_port_unless_443(port: str, suffix: str) -> None:
    lines = block(
        rendered([ON, "HAPROXY.FRONTEND.REDIRECT_HTTPS=true"], {"HAPROXY_HTTPS_PORT": port}),
        "backend www.example.com",
    )
    assert (
        "http-request redirect code 308 location "
        f"https://%[req.hdr(host),field(1,:)]{suffix}%[pathq] unless {{ ssl_fc }}"
    ) in lines


def test_no_redirect_while_no_certificate_is_served() -> None:
    config = rendered([ON, "HAPROXY.FRONTEND.REDIRECT_HTTPS=true"], view=TlsView())
    assert "redirect" not in config


def test_hsts_on_https_responses() -> None:
    lines = block(rendered([ON, "HAPROXY.FRONTEND.HSTS=31536000"]), "backend www.example.com")
    assert (
        'http-response set-header Strict-Transport-Security "max-age=31536000" if { ssl_fc }'
        in lines
    )


def test_backend_tls_verifies_with_the_ca_file_or_says_it_does_not(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Ca().pem)
    tags = [ON, "HAPROXY.BACKEND.TLS=true"]
    unverified = block(rendered(tags), "backend www.example.com")
    assert "server www-1 10.0.0.1:8000 check ssl verify none" in unverified
    config = rendered(tags, {"HAPROXY_BACKEND_CA_FILE": str(ca)})
    assert f"server www-1 10.0.0.1:8000 check ssl verify required ca-file {ca}" in block(
        config, "backend www.example.com"
    )
    # Loaded at start for servers added later through the runtime API.
    assert f"server ca 127.0.0.1:1 disabled ssl verify required ca-file {ca}" in block(
        config, "backend consul_lb_backend_ca"
    )


@pytest.mark.parametrize(
    "tags",
    [
        [
            "HAPROXY.PROTOCOL=tcp",
            "HAPROXY.FRONTEND.PORT=5432",
            "HAPROXY.FRONTEND.REDIRECT_HTTPS=true",
        ],
        ["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432", "HAPROXY.FRONTEND.HSTS=60"],
    ],
)
def test_redirect_and_hsts_are_for_http_services(tags: list[str]) -> None:
    with pytest.raises(TagError, match="apply to http services"):
        parse_tags([ON, *tags])


def test_tcp_services_may_speak_tls_to_their_instances() -> None:
    tags = [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432", "HAPROXY.BACKEND.TLS=true"]
    assert parse_tags(tags).backend_tls is True


def test_a_tcp_service_cannot_take_the_https_port() -> None:
    settings = from_env({**DOM, "HAPROXY_TLS_CERT_KV": "tls"})
    tags = [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=8443"]
    tagged = {"db": [Instance("n", "db-1", "10.0.0.9", 5432, tuple(sorted(tags)))]}
    lb, _ = build(Catalog.build({"db": tags}, tagged), settings)
    assert [s.reason for s in lb.skipped] == [
        "HAPROXY.FRONTEND.PORT=8443 is held by the https frontend"
    ]


def test_haproxy_accepts_every_tls_shape(tmp_path: Path) -> None:
    ca = Ca()
    certs = tmp_path / "tls" / "certs"
    certs.mkdir(parents=True)
    (certs / "www.pem").write_bytes(ca.issue("www.example.com").bundle)
    crt_list = tmp_path / "tls" / "certs.list"
    crt_list.write_text(f"{certs}/www.pem\n")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    env = {
        "HAPROXY_BACKEND_CA_FILE": str(tmp_path / "ca.pem"),
        "HAPROXY_TRUSTED_PROXIES": "10.0.0.0/8",
    }
    tags = [
        ON,
        "HAPROXY.FRONTEND.REDIRECT_HTTPS=true",
        "HAPROXY.FRONTEND.HSTS=63072000",
        "HAPROXY.BACKEND.TLS=true",
    ]
    settings = from_env({**DOM, **env})
    tagged = {"www": [dataclasses.replace(i, tags=tuple(sorted(tags))) for i in WWW]}
    lb, _ = build(Catalog.build({"www": tags}, tagged), settings)
    renderer = Renderer(settings, PATHS, [TEMPLATES])
    renderer.tls = TlsView(True, "www.pem", str(crt_list))
    result = check(renderer.render(lb, LIMITS), Path("/x/live"))
    assert result.ok, result.message


# -- TLS to instances, through a real HAProxy ---------------------------------------------


class TlsBackend:
    """An HTTPS server answering its name, with a certificate from ``ca``."""

    def __init__(self, name: str, ca: Ca, tmp: Path) -> None:
        leaf = ca.issue("127.0.0.1", ips=("127.0.0.1",))
        (tmp / f"{name}.pem").write_bytes(leaf.bundle)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / f"{name}.pem")
        body = name.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trusted(tmp_path: Path) -> Iterator[tuple[Stack, Ca, Path]]:
    ca = Ca()
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    tls = from_env({**DOM, "HAPROXY_BACKEND_CA_FILE": str(tmp_path / "ca.pem")}).tls
    stack = make_stack(tmp_path / "state", tls=tls)
    yield stack, ca, tmp_path
    stop(stack)


def tls_instance(stack: Stack, service_id: str, backend: TlsBackend) -> Instance:
    return Instance(
        "node-1",
        service_id,
        "127.0.0.1",
        backend.port,
        tuple(sorted((ON, "HAPROXY.BACKEND.TLS=true"))),
    )


def test_instances_serving_tls_are_reached_and_verified(
    trusted: tuple[Stack, Ca, Path],
) -> None:
    stack, ca, tmp = trusted
    good = TlsBackend("tls-1", ca, tmp)
    rogue = TlsBackend("rogue", Ca("another CA"), tmp)
    try:
        first = tls_instance(stack, "tls-1", good)
        assert stack.applier.apply(catalog(first)) == "reload"
        assert stack.get("web.example.com") == (200, "tls-1")
        # A server added through the runtime API verifies with the same CA file...
        second = tls_instance(stack, "rogue", rogue)
        assert stack.applier.apply(catalog(first, second)) == "runtime_api"
        # ...and a certificate from another CA is refused: that server fails its checks
        # and gets no request.
        answers = {stack.get("web.example.com") for _ in range(6)}
        assert (200, "tls-1") in answers and (200, "rogue") not in answers
    finally:
        good.close()
        rogue.close()

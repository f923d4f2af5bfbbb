"""LoadBalancer -> haproxy.cfg and hosts.map: the contract's blocks, settings, determinism."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import jinja2
import pytest
from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import fit
from consul_lb.model import build
from consul_lb.render import HaproxyFiles, Renderer, environment, server_address
from consul_lb.settings import Settings, from_env

DOM = {"HAPROXY_DOM": "example.com"}
ON = "HAPROXY.ENABLE=true"
PATHS = Paths(Path("/x")).template_paths()
LIMITS = fit(50000, 10000, nofile=20000)
# The checkout's templates (not those installed under /usr/share).
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def render(
    tags: dict[str, list[str]],
    instances: dict[str, list[Instance]],
    settings: Settings | None = None,
) -> HaproxyFiles:
    """Each instance carries its service's tags."""
    settings = settings or from_env(DOM)
    # A service that the test gives no instance gets one (Consul lists no service
    # without an instance).
    default = [Instance("node-9", "svc-1", "10.0.0.9", 80)]
    tagged = {
        name: [
            dataclasses.replace(i, tags=tuple(sorted(tags[name])))
            for i in instances.get(name, default)
        ]
        for name in tags
    }
    lb, _ = build(Catalog.build(tags, tagged), settings)
    limits = fit(settings.maxconn_global, settings.maxconn, nofile=20000)
    return Renderer(settings, PATHS, [TEMPLATES]).render(lb, limits)


def block(config: str, header: str) -> list[str]:
    """The lines of one section (``backend www.example.com``), without its header."""
    lines = config.splitlines()
    start = lines.index(header)
    body: list[str] = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        body.append(line.strip())
    return body


WWW = [
    Instance("node-1", "www-1", "10.0.0.1", 8000),
    Instance("node-2", "www-2", "10.0.0.2", 8001),
]


def test_http_backend_block_of_the_contract() -> None:
    files = render({"www": [ON]}, {"www": WWW})
    assert block(files.config, "backend www.example.com") == [
        "mode http",
        "balance roundrobin",
        "option forwardfor",
        "option tcp-check",
        "default-server inter 10s fall 1 init-addr last,libc,none",
        "http-request set-header X-Forwarded-Port %[dst_port]",
        "server www-1 10.0.0.1:8000 check",
        "server www-2 10.0.0.2:8001 check",
    ]
    # X-Forwarded-Proto is set by each frontend (issue 12), no longer added by the
    # backend "if { ssl_fc }".
    frontend = block(files.config, "frontend http")
    assert "http-request set-header X-Forwarded-Proto http" in frontend
    assert "http-request del-header X-Forwarded-For" in frontend


def test_balance_and_maxconn_tags() -> None:
    tags = [ON, "HAPROXY.BACKEND.BALANCE=leastconn", "HAPROXY.BACKEND.MAXCONN=200"]
    lines = block(render({"www": tags}, {"www": WWW}).config, "backend www.example.com")
    assert "balance leastconn" in lines
    # maxconn for the backend's servers: each server line carries its instance's.
    assert "server www-1 10.0.0.1:8000 check maxconn 200" in lines
    assert "server www-2 10.0.0.2:8001 check maxconn 200" in lines
    assert not any(line.startswith("maxconn") for line in lines)


def test_one_server_line_per_instance() -> None:
    instances = [Instance(f"n{i}", f"www-{i:02}", f"10.0.1.{i}", 80) for i in range(1, 21)]
    lines = block(render({"www": [ON]}, {"www": instances}).config, "backend www.example.com")
    servers = [line for line in lines if line.startswith("server ")]
    assert servers == [f"server www-{i:02} 10.0.1.{i}:80 check" for i in range(1, 21)]


def test_ipv6_server_address_is_explicit() -> None:
    files = render({"www": [ON]}, {"www": [Instance("n", "w", "2001:db8::1", 80)]})
    assert "server w ipv6@2001:db8::1:80 check" in block(files.config, "backend www.example.com")
    assert server_address("10.0.0.1") == "10.0.0.1"


def test_service_without_passing_instances_has_an_empty_backend() -> None:
    down = [dataclasses.replace(i, status="critical") for i in WWW]
    lines = block(render({"www": [ON]}, {"www": down}).config, "backend www.example.com")
    assert lines[0] == "mode http"
    assert not any(line.startswith("server") for line in lines)


def test_tcp_service_gets_its_own_frontend_and_backend() -> None:
    tags = {"db": [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"]}
    files = render(tags, {"db": [Instance("n", "db-1", "10.0.0.9", 5432)]})
    assert block(files.config, "frontend tcp_5432") == [
        "bind :5432",
        "mode tcp",
        "option tcplog",
        "default_backend db.example.com",
    ]
    assert block(files.config, "backend db.example.com") == [
        "mode tcp",
        "balance roundrobin",
        "option tcp-check",
        "default-server inter 10s fall 1 init-addr last,libc,none",
        "server db-1 10.0.0.9:5432 check",
    ]
    # Not reachable by Host header.
    assert files.hosts_map == ""


def test_http_frontend_routes_by_the_maps() -> None:
    files = render({"www": [ON], "api": [ON]}, {})
    frontend = block(files.config, "frontend http")
    assert frontend[0] == "bind :8080"
    assert "http-request set-var(txn.site) var(txn.host),map(/x/live/hosts.map)" in frontend
    assert "use_backend %[var(txn.backend)] if { var(txn.backend) -m found }" in frontend
    # Each host also in its absolute form (a trailing dot), which clients may send.
    assert files.hosts_map == (
        "api.example.com api.example.com\napi.example.com. api.example.com\n"
        "www.example.com www.example.com\nwww.example.com. www.example.com\n"
    )
    assert files.maps["sites.map"] == (
        "api.example.com api.example.com\nwww.example.com www.example.com\n"
    )
    assert set(files.files()) == {
        "haproxy.cfg",
        "hosts.map",
        "wildcards.map",
        "paths.map",
        "sites.map",
        "health.map",
    }


def test_aliases_wildcards_and_paths_fill_the_routing_maps() -> None:
    tags = {
        "www": [ON, "HAPROXY.FRONTEND.HOSTS=shop.example.org,*.example.net"],
        "api": [ON, "HAPROXY.FRONTEND.PATH=/api", "HAPROXY.FRONTEND.HOSTS=shop.example.org"],
        "v2": [ON, "HAPROXY.FRONTEND.PATH=/api/v2", "HAPROXY.FRONTEND.HOSTS=shop.example.org"],
    }
    maps = render(tags, {}).maps
    assert "shop.example.org shop.example.org\n" in maps["hosts.map"]
    assert maps["wildcards.map"] == ".example.net. *.example.net\n.example.net *.example.net\n"
    # Longest prefix first: HAProxy's map_beg takes the first match.
    assert maps["paths.map"].splitlines() == [
        "shop.example.org/api/v2/ v2.example.com",
        "v2.example.com/api/v2/ v2.example.com",
        "shop.example.org/api/ api.example.com",
        "api.example.com/api/ api.example.com",
    ]
    assert "shop.example.org www.example.com" in maps["sites.map"]
    assert "*.example.net www.example.com" in maps["sites.map"]


def test_routing_options_render_in_the_backend() -> None:
    tags = {
        "www": [
            ON,
            "HAPROXY.FRONTEND.PATH=/shop.v1",
            "HAPROXY.BACKEND.STRIP_PATH=true",
            "HAPROXY.BACKEND.STICKY=true",
            "HAPROXY.BACKEND.HEALTHCHECK.PATH=/health",
            "HAPROXY.FRONTEND.ALLOW=10.0.0.0/8,192.168.1.7",
        ]
    }
    lines = block(render(tags, {"www": WWW}).config, "backend www.example.com")
    assert "http-request deny deny_status 403 unless { src 10.0.0.0/8 192.168.1.7/32 }" in lines
    assert "option httpchk" in lines and "option tcp-check" not in lines
    assert "http-check send meth GET uri /health ver HTTP/1.1 hdr Host www.example.com" in lines
    assert "http-check expect rstatus ^[23]" in lines
    assert "cookie consul-lb-www insert indirect nocache dynamic" in lines
    assert any(line.startswith("dynamic-cookie-key ") for line in lines)
    assert "http-request replace-path ^/shop\\.v1/?(.*) /\\1" in lines


def test_hosts_map_lists_only_published_http_services() -> None:
    tags = {
        "www": [ON],
        "Bad": [ON],
        "off": ["HAPROXY.ENABLE=false"],
        "db": [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"],
    }
    files = render(tags, {})
    assert files.hosts_map == "www.example.com www.example.com\nwww.example.com. www.example.com\n"
    assert files.maps["sites.map"] == "www.example.com www.example.com\n"
    assert "Published: 2 service(s); skipped: 1." in files.config
    assert "Bad" not in files.config and "off.example.com" not in files.config


def test_same_catalog_in_any_order_renders_byte_identical() -> None:
    names = [f"svc{i}" for i in range(12)]
    tags = {n: [ON, f"team={n}"] for n in names}
    tags["db"] = [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"]
    instances = {
        n: [Instance(f"node{j}", f"{n}-{j}", f"10.0.{i}.{j}", 80 + j) for j in range(4)]
        for i, n in enumerate([*names, "db"])
    }
    first = render(tags, instances)
    rng = random.Random(7)
    for _ in range(5):
        shuffled_names = list(tags)
        rng.shuffle(shuffled_names)
        shuffled_tags = {n: list(reversed(tags[n])) for n in shuffled_names}
        shuffled_instances = {n: rng.sample(v, len(v)) for n, v in instances.items()}
        again = render(shuffled_tags, shuffled_instances)
        assert again.config == first.config
        assert again.hosts_map == first.hosts_map
    backends = re.findall(r"^backend (\S+)$", first.config, flags=re.M)
    assert backends == [
        "consul_lb_stats",
        "consul_lb_runtime",
        "db.example.com",
        *sorted(f"{n}.example.com" for n in names),
    ]


def test_global_and_defaults_from_settings() -> None:
    config = render({}, {}).config
    glob = block(config, "global")
    # HAPROXY_MAXCONN_GLOBAL=50000 does not fit 20000 descriptors: lowered, said once.
    assert "maxconn 9500" in glob
    comments = [line for line in glob if line.startswith("#") and "open-file limit" in line]
    assert comments == [
        "# open-file limit 20000 allows at most maxconn 9500: "
        "using it instead of HAPROXY_MAXCONN_GLOBAL=50000"
    ]
    assert "spread-checks 5" in glob
    assert "max-spread-checks 15000" in glob
    assert "hard-stop-after 30s" in glob
    assert "stats socket /x/admin.sock mode 600 level admin expose-fd listeners" in glob
    assert "server-state-file /x/server-state" in glob
    assert [ln for ln in block(config, "defaults") if not ln.startswith("#")][-10:] == [
        "retries 3",
        "backlog 10000",
        "maxconn 9500",  # HAPROXY_MAXCONN=10000, capped by the fitted global
        "timeout connect 3s",
        "timeout client 30s",
        "timeout server 30s",
        "timeout http-keep-alive 1s",
        "timeout http-request 15s",
        "timeout queue 30s",
        "timeout tunnel 1h",
    ]
    assert block(config, "frontend stats")[0] == "bind :4444"


def test_overridden_settings_are_rendered() -> None:
    settings = from_env(
        {
            **DOM,
            "HAPROXY_MAXCONN_GLOBAL": "4000",
            "HAPROXY_MAXCONN": "3000",
            "HAPROXY_SPREAD_CHECKS": "2",
            "HAPROXY_MAX_SPREAD_CHECKS": "900",
            "HAPROXY_RETRIES": "5",
            "HAPROXY_BACKLOG": "128",
            "HAPROXY_TIMEOUT_CONNECT": "500ms",
            "HAPROXY_TIMEOUT_CLIENT": "1m",
            "HAPROXY_TIMEOUT_SERVER": "2m",
            "HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE": "2s",
            "HAPROXY_TIMEOUT_HTTP_REQUEST": "5s",
            "HAPROXY_TIMEOUT_QUEUE": "10s",
            "HAPROXY_HTTP_PORT": "80",
            "HAPROXY_STATS_PORT": "9000",
            "HAPROXY_HARD_STOP_AFTER": "2m",
        }
    )
    config = render({}, {}, settings).config
    glob = block(config, "global")
    assert "maxconn 4000" in glob
    assert "# open-file limit 20000 allows maxconn 4000" in glob
    assert {"spread-checks 2", "max-spread-checks 900", "hard-stop-after 2m"} <= set(glob)
    assert [ln for ln in block(config, "defaults") if not ln.startswith("#")][-10:] == [
        "retries 5",
        "backlog 128",
        "maxconn 3000",
        "timeout connect 500ms",
        "timeout client 1m",
        "timeout server 2m",
        "timeout http-keep-alive 2s",
        "timeout http-request 5s",
        "timeout queue 10s",
        "timeout tunnel 1h",
    ]
    assert block(config, "frontend http")[0] == "bind :80"
    assert block(config, "frontend stats")[0] == "bind :9000"
    assert "server runtime 127.0.0.1:4445" in block(config, "backend consul_lb_runtime")


def test_the_health_uri_says_why_it_fails() -> None:
    lb, _ = build(Catalog(), from_env(DOM))
    renderer = Renderer(from_env(DOM), PATHS, [TEMPLATES])
    waiting = renderer.render(lb, LIMITS, waiting=True)
    serving = renderer.render(lb, LIMITS)
    stats = block(serving.config, "frontend stats")
    assert "acl consul_lb_waiting str(waiting),map(/x/live/health.map) -m found" in stats
    assert "acl consul_lb_draining str(draining),map(/x/live/health.map) -m found" in stats
    assert (
        'http-request return status 200 content-type text/plain string "ok" if consul_lb_health'
        in stats
    )
    # The reason is in the map (changed through the runtime API, without a reload).
    assert (waiting.health_map, serving.health_map) == ("waiting 1\n", "")
    assert waiting.config == serving.config


def test_a_backend_section_is_rendered_once_while_it_stays_the_same(tmp_path: Path) -> None:
    # An operator's backend template that counts its renders in a comment.
    (tmp_path / "backend.cfg.j2").write_text(
        '{% include "default/backend.cfg.j2" %}    # rendered {{ counter() }}\n'
    )
    calls: list[str] = []
    renderer = Renderer(from_env(DOM), PATHS, [tmp_path])

    def counter() -> int:
        calls.append("x")
        return len(calls)

    renderer.env.globals["counter"] = counter
    www = [dataclasses.replace(i, tags=(ON,)) for i in WWW]
    api = [Instance("n", "api-1", "10.0.0.3", 80, (ON,))]
    catalog = Catalog.build({"www": [ON], "api": [ON]}, {"www": www, "api": api})
    lb, _ = build(catalog, from_env(DOM))
    first = renderer.render(lb, LIMITS)
    assert len(calls) == 2
    moved = Catalog.build(
        {"www": [ON], "api": [ON]}, {"www": www, "api": [dataclasses.replace(api[0], port=81)]}
    )
    second = renderer.render(build(moved, from_env(DOM))[0], LIMITS)
    assert len(calls) == 3  # only api's section again
    assert "server api-1 10.0.0.3:81 check" in second.config
    assert first.config.count("# rendered 1") == 1


def test_every_line_is_a_comment_a_section_or_indented() -> None:
    tags = {"www": [ON], "db": [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"]}
    config = render(tags, {"www": WWW}).config
    assert config.endswith("\n") and "\n\n\n" not in config
    for line in config.splitlines():
        assert line == "" or line.startswith(
            ("#", "    ", "global", "defaults", "frontend ", "backend ")
        )
        assert line == line.rstrip()


def test_strict_undefined_raises(tmp_path: Path) -> None:
    (tmp_path / "broken.j2").write_text("maxconn {{ settings.no_such_field }}\n")
    (tmp_path / "typo.j2").write_text("{{ no_such_name }}\n")
    env = environment([tmp_path])
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("broken.j2").render(settings=from_env(DOM))
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("typo.j2").render()


def test_render_with_a_broken_template_raises(tmp_path: Path) -> None:
    (tmp_path / "haproxy.cfg.j2").write_text("maxconn {{ limits.maxconn_globl }}\n")
    lb, _ = build(Catalog(), from_env(DOM))
    with pytest.raises(jinja2.UndefinedError):
        Renderer(from_env(DOM), PATHS, [tmp_path]).render(lb, LIMITS)


def test_structure_is_the_config_without_its_server_lines() -> None:
    one = render({"www": [ON]}, {"www": WWW[:1]})
    two = render({"www": [ON]}, {"www": WWW})
    assert one.config != two.config
    assert one.structure() == two.structure()
    assert "server www-1" not in one.structure()
    assert "server runtime" not in one.structure()

"""Catalog -> LoadBalancer: what is published, what is skipped and why, server names."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from consul_lb.consul.catalog import Catalog, Instance, Service
from consul_lb.model import Backend, LoadBalancer, Server, Skipped, build, server_name, wants
from consul_lb.model.claims import Holders
from consul_lb.settings import Settings

SETTINGS = Settings(domain="example.com")
ON = "HAPROXY.ENABLE=true"
TCP = ("HAPROXY.PROTOCOL=tcp",)


def inst(service_id: str, address: str = "10.0.0.1", port: int = 80, node: str = "n1") -> Instance:
    return Instance(node=node, service_id=service_id, address=address, port=port)


def catalog(services: dict[str, tuple[list[str], list[Instance]]]) -> Catalog:
    """Each instance carries the service's tags unless it has its own."""
    return Catalog.build(
        {name: tags for name, (tags, _) in services.items()},
        {
            name: [i if i.tags else dataclasses.replace(i, tags=tuple(sorted(tags))) for i in insts]
            for name, (tags, insts) in services.items()
        },
    )


def run(
    services: dict[str, tuple[list[str], list[Instance]]], settings: Settings = SETTINGS
) -> tuple[LoadBalancer, list[str]]:
    return build(catalog(services), settings)


def tcp(port: int) -> list[str]:
    return [ON, *TCP, f"HAPROXY.FRONTEND.PORT={port}"]


def skipped(lb: LoadBalancer) -> dict[str, str]:
    return {s.service: s.reason for s in lb.skipped}


def published(lb: LoadBalancer) -> list[str]:
    return [b.service for b in lb.backends]


def test_published_http_service() -> None:
    lb, problems = run({"www": ([ON], [inst("www-1"), inst("www-2", "10.0.0.2", 8080)])})
    assert lb == LoadBalancer(
        backends=(
            Backend(
                service="www",
                name="www.example.com",
                protocol="http",
                balance="roundrobin",
                frontend_port=None,
                servers=(Server("www-1", "10.0.0.1", 80), Server("www-2", "10.0.0.2", 8080)),
                hosts=("www.example.com",),
            ),
        ),
        skipped=(),
    )
    assert lb.http_backends == lb.backends and lb.tcp_backends == ()
    assert problems == []


def test_tags_reach_the_backend() -> None:
    tags = [ON, "HAPROXY.BACKEND.BALANCE=leastconn", "HAPROXY.BACKEND.MAXCONN=50"]
    (backend,) = run({"api": (tags, [inst("a")])})[0].backends
    assert (backend.balance, backend.servers[0].maxconn) == ("leastconn", 50)


def test_published_tcp_service() -> None:
    lb, _ = run({"db": (tcp(5432), [inst("db-1", port=5432)])})
    (backend,) = lb.tcp_backends
    assert (backend.name, backend.protocol, backend.frontend_port) == (
        "db.example.com",
        "tcp",
        5432,
    )
    assert lb.http_backends == ()


def test_service_without_passing_instances_is_published_empty() -> None:
    down = dataclasses.replace(inst("i"), status="critical")
    lb, problems = run({"www": ([ON], [down])})
    assert lb.backends[0].servers == () and problems == []


@pytest.mark.parametrize(
    "tags",
    [[], ["HAPROXY.ENABLE=false"], ["traefik.enable=true"], ["HAPROXY.PROTOCOL=tcp"]],
)
def test_services_not_enabled_are_ignored(tags: list[str]) -> None:
    lb, problems = run({"www": (tags, [inst("a")])})
    assert lb == LoadBalancer((), ()) and problems == []


def test_bad_tags_skip_even_a_not_enabled_service() -> None:
    # A typo in the tag that enables it must be reported, not silently ignored.
    lb, _ = run({"www": (["HAPROXY.ENABLE=yes"], [inst("a")])})
    assert "HAPROXY.ENABLE" in skipped(lb)["www"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Www", "not a valid DNS label"),
        ("WWW", "not a valid DNS label"),
        ("my_service", "not a valid DNS label"),
        ("my.service", "not a valid DNS label"),
        ("-www", "not a valid DNS label"),
        ("www-", "not a valid DNS label"),
        ("www\n", "not a valid DNS label"),
        ("www api", "not a valid DNS label"),
        ("www#x", "not a valid DNS label"),
        ("", "not a valid DNS label"),
        ("a" * 64, "not a valid DNS label"),
    ],
)
def test_invalid_service_names_are_skipped(name: str, reason: str) -> None:
    lb, _ = run({name: ([ON], [inst("a")]), "ok": ([ON], [inst("b")])})
    assert published(lb) == ["ok"]
    assert reason in skipped(lb)[name]
    assert "\n" not in skipped(lb)[name]


def test_longest_label_is_fine() -> None:
    lb, _ = run({"a" * 63: ([ON], [inst("i")])})
    assert published(lb) == ["a" * 63]


def test_host_name_too_long_is_skipped() -> None:
    long_domain = Settings(domain=".".join(["d" * 63] * 3))  # 191 characters
    lb, _ = run({"a" * 62: ([ON], [inst("i")]), "b": ([ON], [inst("i")])}, long_domain)
    assert published(lb) == ["b"]
    assert "longer than 253" in skipped(lb)["a" * 62]


def test_bad_tag_skips_only_that_service() -> None:
    lb, _ = run(
        {
            "bad": ([ON, "HAPROXY.BACKEND.BALANCE=roundrobin\nlisten x"], [inst("a")]),
            "good": ([ON], [inst("b")]),
        }
    )
    assert published(lb) == ["good"]
    assert skipped(lb)["bad"].startswith("tag 'HAPROXY.BACKEND.BALANCE=")


def test_tcp_without_port_is_skipped() -> None:
    lb, _ = run({"db": ([ON, *TCP], [inst("a")])})
    assert lb.backends == ()
    assert "HAPROXY.FRONTEND.PORT" in skipped(lb)["db"]


@pytest.mark.parametrize(("port", "owner"), [(8080, "http frontend"), (4444, "stats frontend")])
def test_tcp_port_of_a_frontend_is_skipped(port: int, owner: str) -> None:
    lb, _ = run({"db": (tcp(port), [inst("a")])})
    assert lb.backends == ()
    assert f"HAPROXY.FRONTEND.PORT={port} is held by the {owner}" == skipped(lb)["db"]


def test_tcp_port_collision_follows_the_configured_ports() -> None:
    custom = Settings(domain="example.com", http_port=80, stats_port=9000)
    lb, _ = run(
        {"a": (tcp(8080), [inst("i")]), "b": (tcp(80), [inst("i")]), "c": (tcp(9000), [inst("i")])},
        custom,
    )
    assert published(lb) == ["a"]
    assert set(skipped(lb)) == {"b", "c"}


@pytest.mark.parametrize("order", [["alpha", "beta"], ["beta", "alpha"]])
def test_tcp_port_collision_keeps_the_first_name(order: list[str]) -> None:
    services = {name: (tcp(6379), [inst(f"{name}-1")]) for name in order}
    lb, _ = run(services)
    assert published(lb) == ["alpha"]
    assert skipped(lb) == {"beta": "HAPROXY.FRONTEND.PORT=6379 is held by service 'alpha'"}
    # The same holds for a catalog that was not built (and so not sorted) by Catalog.build.
    unsorted = Catalog(
        tuple(
            Service(
                n, tuple(tcp(6379)), (dataclasses.replace(inst(f"{n}-1"), tags=tuple(tcp(6379))),)
            )
            for n in order
        )
    )
    assert [b.service for b in build(unsorted, SETTINGS)[0].backends] == ["alpha"]


def test_skipped_tcp_service_does_not_claim_its_port() -> None:
    # "a" is skipped for its name; "b" may then use the port it asked for.
    lb, _ = run({"A": (tcp(7000), [inst("i")]), "b": (tcp(7000), [inst("i")])})
    assert published(lb) == ["b"]


def test_backends_sorted_by_name() -> None:
    names = ["web", "api", "zeta", "db"]
    lb, _ = run({n: ([ON], [inst("i")]) for n in names})
    assert published(lb) == sorted(names)


def test_server_names_are_service_ids() -> None:
    lb, _ = run({"www": ([ON], [inst("www-2"), inst("www-1"), inst("www:3")])})
    assert [s.name for s in lb.backends[0].servers] == ["www-1", "www-2", "www:3"]


@pytest.mark.parametrize(
    "service_id",
    ["web 1", "web#1", "web\n1", "web\n", 'web"1', "web/1", "", "x" * 65, "wéb"],
)
def test_unsafe_service_ids_are_hashed(service_id: str) -> None:
    instance = inst(service_id)
    name = server_name(instance)
    digest = hashlib.sha1(f"n1/{service_id}".encode()).hexdigest()[:12]
    assert name == f"srv-{digest}"
    # Stable: the same instance always gets the same name.
    assert server_name(inst(service_id)) == name
    lb, _ = run({"www": ([ON], [instance])})
    assert lb.backends[0].servers == (Server(name, "10.0.0.1", 80),)


def test_longest_safe_service_id_is_kept() -> None:
    assert server_name(inst("x" * 64)) == "x" * 64


def test_same_id_on_two_nodes_gets_two_stable_names() -> None:
    a = inst("web", "10.0.0.1", node="node-a")
    b = inst("web", "10.0.0.2", node="node-b")
    lb1, _ = run({"www": ([ON], [a, b])})
    lb2, _ = run({"www": ([ON], [b, a])})
    servers = lb1.backends[0].servers
    assert lb1 == lb2
    suffix = hashlib.sha1(b"node-b").hexdigest()[:8]
    assert servers == (Server("web", "10.0.0.1", 80), Server(f"web-{suffix}", "10.0.0.2", 80))


def test_same_id_on_two_nodes_in_an_unsorted_service() -> None:
    a = inst("web", "10.0.0.1", node="node-a")
    b = inst("web", "10.0.0.2", node="node-b")
    one = Catalog((Service("www", (ON,), (a, b)),))
    other = Catalog((Service("www", (ON,), (b, a)),))
    assert build(one, SETTINGS) == build(other, SETTINGS)


def test_server_names_are_unique_even_when_crafted() -> None:
    # An ID equal to the name the duplicate rule would choose, and a repeated instance.
    crafted = "web-" + hashlib.sha1(b"node-b").hexdigest()[:8]
    instances = [
        inst(crafted, node="node-0"),
        inst("web", node="node-a"),
        inst("web", node="node-b"),
        inst("web", node="node-b"),
    ]
    lb, _ = run({"www": ([ON], instances)})
    names = [s.name for s in lb.backends[0].servers]
    assert len(names) == len(set(names)) == 4


@pytest.mark.parametrize(
    "address",
    [
        "",
        "10.0.0.1 ",
        "10.0.0.1\n",
        "10.0.0.1\n    server evil 10.6.6.6:80",
        "fe80::1%eth0\n    server evil 10.6.6.6:80",
        "fe80::1%eth0",
        "host name",
        "-host",
        "host#x",
        "[::1]",
        "300.1.1.1.1.",
        "a" * 254,
    ],
)
def test_invalid_address_is_left_out(address: str) -> None:
    lb, problems = run({"www": ([ON], [inst("bad", address), inst("good")])})
    assert [s.name for s in lb.backends[0].servers] == ["good"]
    (line,) = problems
    assert line.startswith("service 'www': instance 'bad' has an invalid address")
    assert "\n" not in line


@pytest.mark.parametrize("address", ["10.1.2.3", "::1", "2001:db8::7", "web-1.node.consul", "h"])
def test_valid_addresses(address: str) -> None:
    lb, problems = run({"www": ([ON], [inst("a", address)])})
    assert lb.backends[0].servers[0].address == address and problems == []


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_invalid_port_is_left_out(port: int) -> None:
    lb, problems = run({"www": ([ON], [inst("bad", port=port), inst("good", port=65535)])})
    assert lb.backends[0].servers == (Server("good", "10.0.0.1", 65535),)
    assert problems == [f"service 'www': instance 'bad' has an invalid port {port}"]


def test_skipped_service_has_no_instance_problems() -> None:
    lb, problems = run({"Bad": ([ON], [inst("x", "not valid")])})
    assert lb.backends == () and problems == []


def test_wants_any_haproxy_tag() -> None:
    assert wants("www", ("HAPROXY.ENABLE=true",))
    assert wants("www", ("HAPROXY.ENABLE=false",))
    assert wants("www", ("HAPROXY.BOGUS",))
    assert not wants("www", ("traefik.enable=true", "haproxy.enable=true"))
    assert not wants("www", ())


def test_skipped_sorted_by_name() -> None:
    lb, _ = run({"m_x": ([ON], [inst("i")]), "Z": ([ON], [inst("i")]), "B": ([ON], [inst("i")])})
    assert [s.service for s in lb.skipped] == ["B", "Z", "m_x"]
    assert all(isinstance(s, Skipped) and "DNS label" in s.reason for s in lb.skipped)


# -- per-instance tags (a rolling deploy, leftovers, instances without the tag) ------------


def deployed(
    service_id: str, tags: list[str], created: int, status: str = "passing", port: int = 80
) -> Instance:
    return Instance(
        node="n1",
        service_id=service_id,
        address="10.0.0.1",
        port=port,
        tags=tuple(sorted(tags)),
        status=status,
        create_index=created,
    )


def one(services: list[Instance], name: str = "web") -> tuple[LoadBalancer, list[str]]:
    return build(
        Catalog.build({name: [t for i in services for t in i.tags]}, {name: services}), SETTINGS
    )


def test_an_instance_without_the_enable_tag_gets_no_traffic() -> None:
    lb, _ = one([deployed("tagged", [ON], 10), deployed("untagged", [], 11)])
    assert [s.name for s in lb.backends[0].servers] == ["tagged"]


def test_a_rolling_deploy_takes_effect_with_its_first_passing_instance() -> None:
    old = [
        deployed(f"old-{n}", [ON, "HAPROXY.BACKEND.BALANCE=roundrobin"], 10 + n) for n in range(3)
    ]
    new = deployed("new-1", [ON, "HAPROXY.BACKEND.BALANCE=leastconn"], 50)
    lb, problems = one([*old, new])
    (backend,) = lb.backends
    # Published throughout, with every passing instance, and the newest one's balance.
    assert backend.balance == "leastconn"
    assert [s.name for s in backend.servers] == ["new-1", "old-0", "old-1", "old-2"]
    assert lb.skipped == ()
    assert any("disagree on HAPROXY.BACKEND.BALANCE" in p and "'new-1'" in p for p in problems)


def test_a_new_instance_that_does_not_pass_yet_has_no_say() -> None:
    old = deployed("old", [ON, "HAPROXY.BACKEND.BALANCE=roundrobin"], 10)
    starting = deployed("new", [ON, "HAPROXY.BACKEND.BALANCE=leastconn"], 50, status="critical")
    lb, problems = one([old, starting])
    assert lb.backends[0].balance == "roundrobin"
    assert [s.name for s in lb.backends[0].servers] == ["old"]
    assert problems == []


def test_a_critical_leftover_with_another_value_does_not_unpublish_a_healthy_service() -> None:
    leftover = deployed(
        "leftover", [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9000"], 99, "critical"
    )
    healthy = deployed("healthy", [ON], 10)
    lb, _ = one([healthy, leftover])
    assert [(b.protocol, [s.name for s in b.servers]) for b in lb.backends] == [
        ("http", ["healthy"])
    ]


def test_while_no_instance_passes_the_newest_one_shapes_the_backend() -> None:
    a = deployed("a", [ON, "HAPROXY.BACKEND.BALANCE=first"], 10, "critical")
    b = deployed("b", [ON, "HAPROXY.BACKEND.BALANCE=leastconn"], 20, "critical")
    lb, _ = one([a, b])
    assert (lb.backends[0].balance, lb.backends[0].servers) == ("leastconn", ())


def test_maxconn_follows_each_instance() -> None:
    a = deployed("a", [ON, "HAPROXY.BACKEND.MAXCONN=10"], 10)
    b = deployed("b", [ON, "HAPROXY.BACKEND.MAXCONN=20"], 20)
    c = deployed("c", [ON], 30)
    lb, problems = one([a, b, c])
    assert {s.name: s.maxconn for s in lb.backends[0].servers} == {"a": 10, "b": 20, "c": None}
    assert problems == []  # maxconn is per server: no disagreement


def test_an_instance_with_a_bad_tag_is_left_out_and_the_others_publish() -> None:
    good = deployed("good", [ON], 10)
    bad = deployed("bad", [ON, "HAPROXY.BACKEND.BALANCE=bogus"], 20)
    lb, problems = one([good, bad])
    assert [s.name for s in lb.backends[0].servers] == ["good"]
    assert any("'bad'" in p and "bogus" in p for p in problems)


def test_warning_instances_follow_the_health_policy() -> None:
    ok = deployed("ok", [ON], 10)
    warn = deployed("warn", [ON], 20, status="warning")
    catalog = Catalog.build({"web": [ON]}, {"web": [ok, warn]})
    excluded = build(catalog, SETTINGS)[0]
    included = build(catalog, Settings(domain="example.com", health_warning="include"))[0]
    assert [s.name for s in excluded.backends[0].servers] == ["ok"]
    assert [s.name for s in included.backends[0].servers] == ["ok", "warn"]


def test_a_tcp_port_stays_with_the_service_that_holds_it() -> None:
    # "alpha" sorts first and registered later, but "zulu" holds port 9000.
    zulu = deployed("zulu-1", tcp(9000), 30)
    alpha = deployed("alpha-1", tcp(9000), 40)
    catalog = Catalog.build(
        {"zulu": tcp(9000), "alpha": tcp(9000)}, {"zulu": [zulu], "alpha": [alpha]}
    )
    lb, _ = build(catalog, SETTINGS, held=Holders(ports={9000: "zulu"}))
    assert published(lb) == ["zulu"]
    assert skipped(lb) == {"alpha": "HAPROXY.FRONTEND.PORT=9000 is held by service 'zulu'"}


def test_without_a_holder_the_first_registered_service_gets_the_port() -> None:
    zulu = deployed("zulu-1", tcp(9000), 30)
    alpha = deployed("alpha-1", tcp(9000), 40)
    catalog = Catalog.build(
        {"zulu": tcp(9000), "alpha": tcp(9000)}, {"zulu": [zulu], "alpha": [alpha]}
    )
    assert published(build(catalog, SETTINGS)[0]) == ["zulu"]


# -- routes: host aliases, paths, groups, weights -------------------------------------------


def routed(lb: LoadBalancer) -> dict[tuple[str, str | None], str]:
    return lb.routes


def test_aliases_and_paths_are_routes() -> None:
    api = deployed(
        "api-1", [ON, "HAPROXY.FRONTEND.HOSTS=shop.example.org", "HAPROXY.FRONTEND.PATH=/api"], 10
    )
    www = deployed("www-1", [ON, "HAPROXY.FRONTEND.HOSTS=shop.example.org"], 11)
    catalog = Catalog.build(
        {"api": list(api.tags), "www": list(www.tags)}, {"api": [api], "www": [www]}
    )
    lb, problems = build(catalog, SETTINGS)
    assert routed(lb) == {
        ("api.example.com", "/api"): "api",
        ("shop.example.org", "/api"): "api",
        ("www.example.com", None): "www",
        ("shop.example.org", None): "www",
    }
    assert problems == []


def test_a_host_claimed_twice_stays_with_its_holder() -> None:
    first = deployed("a-1", [ON, "HAPROXY.FRONTEND.HOSTS=shared.example.org"], 20)
    second = deployed("b-1", [ON, "HAPROXY.FRONTEND.HOSTS=shared.example.org"], 10)
    catalog = Catalog.build(
        {"a": list(first.tags), "b": list(second.tags)}, {"a": [first], "b": [second]}
    )
    # Nobody holds it yet: the service registered first ("b") gets it.
    lb, problems = build(catalog, SETTINGS)
    assert routed(lb)[("shared.example.org", None)] == "b"
    assert problems == ["service 'a': route shared.example.org is held by service 'b'"]
    # "a" holds it in the running load balancer: it keeps it.
    held = Holders(routes={("shared.example.org", None): "a"})
    lb, problems = build(catalog, SETTINGS, held=held)
    assert routed(lb)[("shared.example.org", None)] == "a"
    assert published(lb) == ["a", "b"]  # "b" keeps its own host


def test_an_alias_cannot_take_another_services_own_host() -> None:
    thief = deployed("t-1", [ON, "HAPROXY.FRONTEND.HOSTS=www.example.com"], 1)
    www = deployed("www-1", [ON], 50)
    catalog = Catalog.build({"t": list(thief.tags), "www": [ON]}, {"t": [thief], "www": [www]})
    lb, problems = build(catalog, SETTINGS, held=Holders(routes={("www.example.com", None): "t"}))
    assert routed(lb)[("www.example.com", None)] == "www"
    assert any("route www.example.com is held by service 'www'" in p for p in problems)


def test_groups_select_instances() -> None:
    internal = deployed("i-1", [ON, "HAPROXY.GROUP=internal"], 10)
    external = deployed("e-1", [ON], 11)
    catalog = Catalog.build(
        {"web": [*internal.tags, *external.tags]}, {"web": [internal, external]}
    )
    everything = build(catalog, SETTINGS)[0]
    only_internal = build(catalog, dataclasses.replace(SETTINGS, groups=("internal",)))[0]
    only_external = build(catalog, dataclasses.replace(SETTINGS, groups=("external",)))[0]
    assert [s.name for s in everything.backends[0].servers] == ["e-1", "i-1"]
    assert [s.name for s in only_internal.backends[0].servers] == ["i-1"]
    assert [s.name for s in only_external.backends[0].servers] == ["e-1"]
    nobody = build(catalog, dataclasses.replace(SETTINGS, groups=("other",)))[0]
    assert nobody.backends == () and nobody.skipped == ()


def test_watched_services_follow_the_groups() -> None:
    from consul_lb.model import watched

    internal_only = watched(dataclasses.replace(SETTINGS, groups=("internal",)))
    assert internal_only("a", (ON, "HAPROXY.GROUP=internal"))
    assert not internal_only("b", (ON,))  # external: not watched at all
    assert not internal_only("c", (ON, "HAPROXY.GROUP=secret"))
    assert watched(SETTINGS)("b", (ON,))
    assert not watched(SETTINGS)("plain", ("web",))


def test_consul_weights_become_haproxy_weights() -> None:
    heavy = dataclasses.replace(deployed("heavy", [ON], 10), weight_passing=10)
    light = deployed("light", [ON], 11)
    warn = dataclasses.replace(deployed("warn", [ON], 12, status="warning"), weight_warning=3)
    catalog = Catalog.build({"web": [ON]}, {"web": [heavy, light, warn]})
    lb = build(catalog, dataclasses.replace(SETTINGS, health_warning="include"))[0]
    assert {s.name: s.weight for s in lb.backends[0].servers} == {
        "heavy": 10,
        "light": 1,
        "warn": 3,
    }
    big = [
        dataclasses.replace(deployed(f"s{w}", [ON], w), weight_passing=w) for w in (1, 1000, 65535)
    ]
    scaled = build(Catalog.build({"web": [ON]}, {"web": big}), SETTINGS)[0]
    assert {s.name: s.weight for s in scaled.backends[0].servers} == {
        "s1": 1,
        "s1000": 4,
        "s65535": 256,
    }

"""Strategies for whole catalogs: each instance's own tags, its address, port, status,
weights and Consul index, the services of a catalog and what the running load balancer
holds."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from consul_lb.consul.catalog import CRITICAL, PASSING, WARNING, Catalog, Instance
from hypothesis import strategies as st

from tests.integration.render_property.invalid_values import (
    ARGUABLE_VALUES,
    HOSTILE_INJECTIONS,
    INVALID_VALUES,
    UNKNOWN_KEYS,
)
from tests.integration.render_property.scenario import (
    DNS_LABEL,
    DOMAIN,
    ENABLE,
    ENVS,
    MARK,
    SETTINGS,
    Route,
    Scenario,
    tag_values,
)
from tests.integration.render_property.values import (
    ALNUM,
    GOOD_VALUES,
    HOST_NAME,
    INJECTIONS,
    LABEL,
    SERVICE_LABEL,
    hostile,
    names,
)


@st.composite
def bad_tag(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(sorted(GOOD_VALUES)))
    injections = HOSTILE_INJECTIONS.get(key, INJECTIONS)
    return draw(
        st.one_of(
            hostile(GOOD_VALUES[key], injections).map(lambda v: f"HAPROXY.{key}={v}"),
            st.sampled_from(INVALID_VALUES[key]).map(lambda v: f"HAPROXY.{key}={v}"),
            st.sampled_from(UNKNOWN_KEYS).map(lambda k: f"HAPROXY.{k}=true"),
            st.just(f"HAPROXY.{key}"),  # no '=value'
            hostile(st.just(key)).map(lambda k: f"HAPROXY.{k}=true"),
        )
    )


def good_tag(key: str) -> st.SearchStrategy[str]:
    return GOOD_VALUES[key].map(lambda v: f"HAPROXY.{key}={v}")


def arguable_tag() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [f"HAPROXY.{k}={v}" for k, values in sorted(ARGUABLE_VALUES.items()) for v in values]
    )


FOREIGN_TAGS = st.one_of(
    st.sampled_from(
        [
            "traefik.enable=true",
            "haproxy.enable=true",  # the prefix is case-sensitive: not ours
            "HAPROXY",
            "HAPROXY_ENABLE=true",
            "urlprefix-/",
            "v1",
        ]
    ),
    hostile(st.text(max_size=10)).filter(lambda t: not t.startswith("HAPROXY.")),
)
# Tags that read HTTP (README: tcp services cannot be routed by Host).
HTTP_TAGS = (
    "FRONTEND.HOSTS",
    "FRONTEND.PATH",
    "BACKEND.STRIP_PATH",
    "BACKEND.STICKY",
    "BACKEND.HEALTHCHECK.PATH",
)


@st.composite
def instance_tags(draw: st.DrawFn, clean: bool = False) -> list[str]:
    """Tags of one instance; ``clean``: enabled and without malformed or conflicting tags
    (which still leaves room for a tcp service without a port, an HTTP-only balance in
    tcp mode, a taken tcp port or a group this load balancer does not publish)."""
    tags: list[str] = []
    if clean:
        tags.append(ENABLE)
    elif draw(st.integers(0, 9)) < 8:
        tags.append(draw(good_tag("ENABLE")))
    tcp = draw(st.booleans())
    if tcp:
        tags.append("HAPROXY.PROTOCOL=tcp")
        if draw(st.integers(0, 4)) > 0:
            tags.append(draw(good_tag("FRONTEND.PORT")))
    elif draw(st.booleans()):
        tags.append("HAPROXY.PROTOCOL=http")
    for key in ("BACKEND.BALANCE", "BACKEND.MAXCONN"):
        if draw(st.booleans()):
            tags.append(draw(good_tag(key)))
    for key in (
        "FRONTEND.REDIRECT_HTTPS",
        "FRONTEND.HSTS",
        "BACKEND.TLS",
        "FRONTEND.ACME",
        "FRONTEND.ALLOW",
        "GROUP",
        "BACKEND.STICKY",
        "BACKEND.HEALTHCHECK.PATH",
    ):
        if clean and tcp and key in HTTP_TAGS:
            continue
        if draw(st.integers(0, 3)) == 0:
            tags.append(draw(good_tag(key)))
    if not (clean and tcp):
        if draw(st.integers(0, 2)) == 0:
            tags.append(draw(good_tag("FRONTEND.HOSTS")))
        path = draw(st.integers(0, 2)) == 0
        if path:
            tags.append(draw(good_tag("FRONTEND.PATH")))
        if (path or not clean) and draw(st.integers(0, 2)) == 0:
            tags.append(draw(good_tag("BACKEND.STRIP_PATH")))
    tags += draw(st.lists(FOREIGN_TAGS, max_size=2))
    if not clean and draw(st.booleans()):
        tags += draw(st.lists(bad_tag(), min_size=1, max_size=2))
    if not clean and draw(st.integers(0, 3)) == 0:  # a second value for a key: a conflict
        tags.append(draw(good_tag(draw(st.sampled_from(sorted(GOOD_VALUES))))))
    if not clean and draw(st.integers(0, 2)) == 0:
        tags.append(draw(arguable_tag()))
    if len(tags) > 0 and draw(st.booleans()):  # an exact duplicate: harmless
        tags.append(draw(st.sampled_from(tags)))
    return tags


GOOD_ADDRESSES = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), HOST_NAME)
# Addresses a reader could argue about; the model may take or leave them, but what it
# takes must pass haproxy -c.
EDGE_ADDRESSES = st.one_of(
    st.text("0123456789.", min_size=1, max_size=17),
    st.tuples(st.sampled_from(ALNUM), st.text(ALNUM + ".-", max_size=40)).map("".join),
    st.sampled_from(["0.0.0.0", "::", "::1", "localhost", "a" * 63 + "." + "b" * 63, "x" * 253]),
)
BAD_ADDRESSES = st.one_of(
    hostile(st.one_of(st.ip_addresses().map(str), HOST_NAME)),
    st.sampled_from(
        [
            "",
            " ",
            "fe80::1%eth0",
            "fe80::1%eth0\n    server x 1.2.3.4:80",
            "10.0.0.1:80",
            "[::1]",
            "10.0.0.1/24",
            "10.0.0.1 backup",
            "ipv4@10.0.0.1",
            "unix@/tmp/x",
            "-foo",
            "foo.",
            "a" * 254,
        ]
    ),
)
PORTS = st.one_of(
    st.integers(1, 65535), st.sampled_from([-1, 0, 1, 65535, 65536, 70000, 2**31, -(2**31)])
)
SERVICE_IDS = st.one_of(
    LABEL,
    st.sampled_from(["a", "b"]),  # the same ID twice in one service
    st.text(ALNUM + "_.:-", min_size=1, max_size=70),
    hostile(LABEL),
)
NODES = st.one_of(LABEL, st.sampled_from(["n1", "n2"]), hostile(LABEL))
ADDRESSES = st.one_of(GOOD_ADDRESSES, GOOD_ADDRESSES, EDGE_ADDRESSES, BAD_ADDRESSES)
STATUSES = st.sampled_from([PASSING, PASSING, PASSING, WARNING, CRITICAL])
# Consul's Weights: mostly Consul's default 1, else 0 (Warning may be 0) up to HAProxy's
# top 256 (used as they are), and now and then above it (scaled into 1..256).
WEIGHTS = st.integers(0, 9).flatmap(
    lambda n: (
        st.just(1)
        if n < 5
        else st.sampled_from([0, 1, 2, 3, 10, 100, 255, 256])
        if n < 8
        else st.one_of(st.sampled_from([257, 1000, 65535]), st.integers(257, 100_000))
    )
)


@st.composite
def instances(draw: st.DrawFn, tags: list[str], status: str | None = None) -> Instance:
    """One instance with ``tags``, as Instance.from_health_entry builds it (its tags a
    sorted set); its CreateIndex is set once the whole catalog is drawn."""
    return Instance(
        node=draw(NODES),
        service_id=draw(SERVICE_IDS),
        address=draw(ADDRESSES),
        port=draw(PORTS),
        tags=tuple(sorted(set(tags))),
        status=status or draw(STATUSES),
        weight_passing=draw(WEIGHTS),
        weight_warning=draw(WEIGHTS),
    )


@st.composite
def service_instances(draw: st.DrawFn, clean: bool) -> list[Instance]:
    """A service's instances: most share one registration's tags, others carry another
    version's (valid or not) or none of ours. A clean service's first instance is clean
    and passing, so that most examples publish something and haproxy -c sees backends."""
    base = draw(instance_tags(clean))
    found: list[Instance] = []
    for i in range(draw(st.integers(1 if clean else 0, 4))):
        if clean and i == 0:
            found.append(draw(instances(base, PASSING)))
            continue
        kind = draw(st.integers(0, 9))
        tags = (
            base
            if kind < 5
            else draw(instance_tags(clean=kind == 5))
            if kind < 9
            else draw(st.lists(FOREIGN_TAGS, max_size=2))
        )
        found.append(draw(instances(tags)))
    return found


PORT_TAG = re.compile(r"HAPROXY\.FRONTEND\.PORT=([1-9][0-9]{0,4})", re.ASCII)


def asked_routes(name: str, found: Sequence[Instance]) -> set[Route]:
    """Routes a service's instances may ask for (roughly: to draw held routes from)."""
    routes: set[Route] = set()
    for i in found:
        values = tag_values(i.tags)
        paths = [p for p in values.get("FRONTEND.PATH", []) if re.fullmatch(r"(/[\w.~-]+)+", p)]
        hosts = {f"{name}.{DOMAIN}"} | {
            h.strip(" ").lower() for v in values.get("FRONTEND.HOSTS", []) for h in v.split(",")
        }
        routes |= {(h, p) for h in hosts if h and MARK not in h for p in [None, *paths[:1]]}
    return routes


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """One to three clean services next to zero to three of any kind; every instance
    registered at its own CreateIndex; sometimes tcp ports and routes held by the running
    load balancer (ports by services that could have held them: DNS labels, one port
    each; routes by any service of the catalog)."""
    env = draw(st.integers(0, len(ENVS) - 1))
    services: dict[str, list[Instance]] = {}
    for clean in [True] * draw(st.integers(1, 3)) + [False] * draw(st.integers(0, 3)):
        name = draw(SERVICE_LABEL if clean else names())
        found = draw(service_instances(clean))
        services.setdefault(name, found)
    total = sum(map(len, services.values()))
    order = iter(draw(st.permutations(range(total))))
    services = {
        name: [dataclasses.replace(i, create_index=100 + 7 * next(order)) for i in found]
        for name, found in services.items()
    }
    held: dict[int, str] = {}
    for name, found in services.items():
        if not DNS_LABEL.fullmatch(name) or draw(st.integers(0, 2)) > 0:
            continue
        asked = sorted({int(m[1]) for i in found for t in i.tags if (m := PORT_TAG.fullmatch(t))})
        ports = [p for p in [*asked, 9000, 9001] if p <= 65535]
        port = draw(st.sampled_from(ports))
        if port not in held and port not in (SETTINGS.http_port, SETTINGS.stats_port):
            held[port] = name
    labels = sorted(n for n in services if DNS_LABEL.fullmatch(n))
    routes: dict[Route, str] = {}
    candidates = sorted(
        {r for n in labels for r in asked_routes(n, services[n])}, key=lambda r: (r[0], r[1] or "")
    )
    if labels and candidates and draw(st.integers(0, 2)) == 0:
        for route in draw(st.lists(st.sampled_from(candidates), max_size=3, unique=True)):
            routes[route] = draw(st.sampled_from(labels))
    return Scenario(services, held, routes, env)


def to_catalog(scenario: Scenario) -> Catalog:
    """As the watcher builds it: a service's tags are the union of its instances'."""
    return Catalog.build(
        {name: {t for i in found for t in i.tags} for name, found in scenario.services.items()},
        scenario.services,
    )

"""Check 1: the model's load balancer against the oracle's entitlement, under every
reading the README allows (servers, weights scaled, ports and routes)."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from consul_lb import model
from consul_lb.consul.catalog import Instance

from tests.integration.render_property.interpretations import (
    HAPROXY_MAX_WEIGHT,
    IGNORED,
    PUBLISHED,
    SKIPPED,
    Network,
    Reading,
    Shape,
    interpretations,
)
from tests.integration.render_property.oracle import Entitled, expect
from tests.integration.render_property.scenario import DNS_LABEL, DOMAIN, MARK, Scenario


def address_class(address: str) -> str:
    """good: must become a server; bad: must not; edge: either."""
    if MARK in address or not address or "%" in address:
        return "bad"
    try:
        ipaddress.ip_address(address)
        return "good"
    except ValueError:
        pass
    if len(address) <= 253 and all(DNS_LABEL.fullmatch(p) for p in address.split(".")):
        return "good"
    if re.fullmatch(r"[A-Za-z0-9.-]+", address) and address[0].isalnum() and address[-1].isalnum():
        return "edge"
    return "bad"


def networks_of(allow: Sequence[str]) -> frozenset[Network] | None:
    """The model's allow list as networks (None: one of them is not a network)."""
    try:
        found = frozenset(ipaddress.ip_network(a, strict=False) for a in allow if "%" not in a)
    except ValueError:
        return None
    return found if len(found) == len(set(allow)) else None


# Stands for an allow list that is not a list of networks: equal to no entitled one.
NOT_NETWORKS: frozenset[Network] = frozenset({ipaddress.ip_network("255.255.255.255/32")})


def backend_shape(b: model.Backend) -> Shape:
    """The model's backend as the oracle's Shape. For a tcp backend its hosts and path
    mean nothing (no map routes it): left out."""
    http = b.protocol == "http"
    allow = networks_of(b.allow)
    return Shape(
        protocol=b.protocol,
        balance=b.balance,
        port=b.frontend_port,
        redirect=b.redirect_https,
        hsts=b.hsts,
        tls=b.tls,
        acme=b.acme,
        hosts=frozenset(b.hosts) if http else frozenset(),
        path=b.path if http else None,
        strip=b.strip_path,
        sticky=b.sticky,
        health=b.healthcheck_path,
        allow=NOT_NETWORKS if allow is None else allow,
    )


def differences(entitled: Mapping[str, Entitled], lb: model.LoadBalancer) -> list[str]:
    """How ``lb`` differs from what the services are entitled to (empty: it does not)."""
    published = {b.service: b for b in lb.backends}
    skipped = {s.service for s in lb.skipped}
    out = [
        f"{n!r} is not in the catalog" for n in sorted((published.keys() | skipped) - {*entitled})
    ]
    for name, e in sorted(entitled.items()):
        actual = PUBLISHED if name in published else SKIPPED if name in skipped else IGNORED
        if actual not in e.outcomes:
            out.append(f"service {name!r}: {actual}, expected {' or '.join(sorted(e.outcomes))}")
            continue
        if actual != PUBLISHED:
            continue
        b = published[name]
        got = backend_shape(b)
        want = e.shape._replace(hosts=e.hosts if e.shape.protocol == "http" else frozenset())
        if want.protocol == "tcp":
            want = want._replace(path=None)
        if b.name != f"{name}.{DOMAIN}" or got != want:
            diff = {f: (g, w) for f, g, w in zip(Shape._fields, got, want, strict=True) if g != w}
            out.append(f"service {name!r}: backend {b.name}: (got, expected) {diff}")
        out += [f"service {name!r}: {p}" for p in server_differences(e, b.servers)]
    return out


def weight_range(weight: int, top: int) -> tuple[int, int]:
    """README: "Weights up to 256 are used as they are; larger ones are scaled in
    proportion into HAProxy's 1..256": rounded either way, no positive weight below 1;
    whether a 0 stays 0 when scaled ("in proportion") or becomes 1 ("into 1..256"), it
    does not say."""
    if top <= HAPROXY_MAX_WEIGHT:
        return weight, weight
    if weight <= 0:
        return 0, 1
    low, high = (weight * HAPROXY_MAX_WEIGHT) // top, -((-weight * HAPROXY_MAX_WEIGHT) // top)
    return max(1, low), max(1, high)


def fits(points: Sequence[int], ranges: Sequence[tuple[int, int]]) -> bool:
    """Whether each point takes a range of its own (greedy: each point, smallest first,
    takes the range containing it that ends first)."""
    free = list(ranges)
    for p in sorted(points):
        inside = [r for r in free if r[0] <= p <= r[1]]
        if not inside:
            return False
        free.remove(min(inside, key=lambda r: r[1]))
    return True


def server_differences(e: Entitled, servers: Sequence[model.Server]) -> list[str]:
    """One server per entitled instance with a valid address (maybe one per edge
    address), with the instance's own maxconn and its Consul weight as HAProxy's;
    named after a clean, unique service ID."""

    def key(i: Instance, r: Reading) -> tuple[str, int, int | None]:
        return i.address, i.port, r.maxconn

    entitled = e.servers
    required = Counter(key(i, r) for i, r, _ in entitled if address_class(i.address) == "good")
    allowed = required + Counter(
        key(i, r) for i, r, _ in entitled if address_class(i.address) == "edge"
    )
    actual = Counter((s.address, s.port, s.maxconn) for s in servers)
    out = []
    if required - actual:
        out.append(f"instances left out: {required - actual}")
    if actual - allowed:
        out.append(f"servers the input was not entitled to: {actual - allowed}")
    # Scaled against the largest weight of the backend: of its servers, or of every
    # published instance (some left out for a bad address or port): either reading.
    classes = [(address_class(i.address), 1 <= i.port <= 65535, w) for i, _, w in e.published]
    good = [w for c, ok, w in classes if ok and c == "good"]
    tops = {
        max([w for _, _, w in classes], default=0),
        max([w for _, ok, w in classes if ok], default=0),
        max([w for c, _, w in classes if c != "bad"], default=0),
        max(good, default=0),
        *(max([*good, w]) for c, ok, w in classes if ok and c == "edge"),
    }
    weights: dict[tuple[str, int, int | None], list[int]] = {}
    for s in servers:
        weights.setdefault((s.address, s.port, s.maxconn), []).append(s.weight)
    if not any(
        all(
            fits(
                points,
                [weight_range(w, top) for i, r, w in entitled if key(i, r) == k],
            )
            for k, points in weights.items()
        )
        for top in tops
    ):
        scaled = {k: [w for i, r, w in entitled if key(i, r) == k] for k in weights}
        out.append(f"HAProxy weights {weights} are not the Consul weights {scaled}, scaled")
    names = [s.name for s in servers]
    if len(names) != len(set(names)):
        out.append(f"duplicate server names {names}")
    if not all(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", n, re.ASCII) for n in names):
        out.append(f"server names HAProxy may refuse: {names}")
    # A clean ID, unique among the instances that may become servers, names its server.
    ids = Counter(i.service_id for i, _, _ in entitled if address_class(i.address) != "bad")
    by_name = {s.name: s for s in servers}
    for i, r, _ in entitled:
        clean = re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", i.service_id, re.ASCII)
        if clean and ids[i.service_id] == 1 and address_class(i.address) == "good":
            named = by_name.get(i.service_id)
            if named is None or (named.address, named.port, named.maxconn) != key(i, r):
                out.append(f"instance {i.service_id!r} not named after its ID")
    return out


def check_entitlement(
    scenario: Scenario, lb: model.LoadBalancer, problems: Sequence[str]
) -> tuple[bool, dict[str, Entitled]]:
    """Whether ``lb`` follows the first interpretation tried, and what the one it follows
    entitles; fails when none fits."""
    published = {b.service for b in lb.backends}
    skipped = {s.service for s in lb.skipped}
    assert not published & skipped, "a service both published and skipped"
    assert len(published) == len(lb.backends) and len(skipped) == len(lb.skipped)
    found: list[list[str]] = []
    tried = interpretations(scenario)
    for interp in tried:
        entitled = expect(scenario, interp)
        if not (diff := differences(entitled, lb)):
            # README: an instance left out for its tags, and a route lost to another
            # service, are logged (one line each).
            logged = sum(e.malformed + e.lost for n, e in entitled.items() if n in published)
            assert len(problems) >= logged, f"{logged} instances or routes left out: {problems}"
            return interp == tried[0], entitled
        found.append(diff)
    best = min(found, key=len)
    raise AssertionError(
        f"no reading of the README entitles the input to this load balancer "
        f"(closest of {len(tried)}, {len(best)} differences):\n  " + "\n  ".join(best)
    )

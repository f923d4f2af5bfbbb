"""The oracle, part two: what the README's contract entitles each service to, from its
instances' tags, statuses, groups and Consul index (it imports data types only, not
runtime/consul_lb/model/)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from consul_lb.consul.catalog import PASSING, WARNING, Instance

from tests.integration.render_property.interpretations import (
    HTTP_ONLY,
    IGNORED,
    LIST_KEYS,
    PARSERS,
    PUBLISHED,
    SKIPPED,
    Interpretation,
    Meaning,
    Network,
    Reading,
    Shape,
)
from tests.integration.render_property.scenario import (
    DNS_LABEL,
    DOMAIN,
    ENVS,
    SETTINGS,
    Env,
    Route,
    Scenario,
)
from tests.integration.render_property.strategies import HTTP_TAGS


@functools.lru_cache(maxsize=200_000)
def read_tags(tags: tuple[str, ...], interp: Interpretation) -> Reading | None:
    """None for an instance with none of our tags."""
    ours = {t for t in tags if t.startswith("HAPROXY.")}
    if not ours:
        return None
    malformed = False
    raw: dict[str, set[str]] = {}
    meanings: dict[str, set[Meaning]] = {}
    bad_keys: set[str] = set()
    for tag in ours:
        key, sep, value = tag[len("HAPROXY.") :].partition("=")
        meaning = PARSERS[key](value, interp) if sep and key in PARSERS else None
        if meaning is None:
            malformed = True  # unknown, or malformed
            bad_keys.add(key)
            continue
        raw.setdefault(key, set()).add(value)
        meanings.setdefault(key, set()).add(meaning)
    options: dict[str, Meaning] = {}
    for key, seen in meanings.items():
        if key in LIST_KEYS and interp.list_union:
            merged: set[object] = set()
            for items in seen:
                merged |= cast(frozenset[object], items)
            options[key] = cast(Meaning, frozenset(merged))
            continue
        if len(seen) > 1 or (interp.strict_duplicates and len(raw[key]) > 1):
            malformed = True  # two values for one option
        options[key] = next(iter(seen))
    groups = cast(set[str], meanings.get("GROUP", {"external"}))
    group = next(iter(groups)) if len(groups) == 1 and "GROUP" not in bad_keys else None
    asks = meanings.get("ENABLE") == {True}
    protocol = cast(str, options.get("PROTOCOL", "http"))
    balance = cast(str, options.get("BACKEND.BALANCE", "roundrobin"))
    # A frontend port is for tcp services; HTTP-only algorithms for http services.
    if (protocol == "http" and "FRONTEND.PORT" in options) or (
        protocol == "tcp" and HTTP_ONLY.fullmatch(balance)
    ):
        malformed = True
    redirect = options.get("FRONTEND.REDIRECT_HTTPS", False) is True
    acme = options.get("FRONTEND.ACME", False) is True
    # README: redirect, HSTS and ACME (HTTP-01, on the http frontend) are for http services.
    if protocol == "tcp" and (redirect or "FRONTEND.HSTS" in options or acme):
        malformed = True
    if protocol == "tcp" and any(k in options for k in HTTP_TAGS):
        effective = any(options.get(k, False) is not False for k in HTTP_TAGS)
        if interp.tcp_http == "present" or (interp.tcp_http == "effective" and effective):
            malformed = True
        for k in HTTP_TAGS:
            if k != "BACKEND.HEALTHCHECK.PATH" or interp.tcp_http != "applied":
                options.pop(k, None)
    strip = options.get("BACKEND.STRIP_PATH", False) is True
    if strip and "FRONTEND.PATH" not in options:
        if not interp.strip_alone:
            malformed = True
        strip = False
    if malformed:
        return Reading(malformed=True, enabled=False, asks=asks, group=group)
    return Reading(
        malformed=False,
        enabled=asks,
        asks=asks,
        group=group,
        shape=Shape(
            protocol=protocol,
            balance=balance,
            port=cast(int | None, options.get("FRONTEND.PORT")),
            redirect=redirect,
            hsts=cast(int | None, options.get("FRONTEND.HSTS")),
            tls=options.get("BACKEND.TLS", False) is True,
            acme=acme,
            hosts=cast(frozenset[str], options.get("FRONTEND.HOSTS", frozenset())),
            path=cast(str | None, options.get("FRONTEND.PATH")),
            strip=strip,
            sticky=options.get("BACKEND.STICKY", False) is True,
            health=cast(str | None, options.get("BACKEND.HEALTHCHECK.PATH")),
            allow=cast(frozenset[Network], options.get("FRONTEND.ALLOW", frozenset())),
        ),
        maxconn=cast(int | None, options.get("BACKEND.MAXCONN")),
    )


def consul_weight(i: Instance) -> int:
    """README: Consul's ``Passing`` weight for a passing instance, ``Warning`` for one in
    warning."""
    return i.weight_warning if i.status == WARNING else i.weight_passing


@dataclass(frozen=True)
class Entitled:
    """What one service is entitled to under one interpretation."""

    outcomes: frozenset[str]
    shape: Shape = field(default_factory=Shape)
    # Published instances (enabled, in a group published here, passing or warning as
    # HAPROXY_HEALTH_WARNING says) with their reading and Consul weight; servers: those
    # with a valid port.
    published: tuple[tuple[Instance, Reading, int], ...] = ()
    age: int = 0
    malformed: int = 0  # instances left out for their tags (each logged)
    disagree: bool = False  # published instances disagree on the backend's options
    shape_kept: bool = False  # no instance has a say: the newest one shapes the backend
    outside: int = 0  # enabled instances of groups not published here
    hosts: frozenset[str] = frozenset()  # http: the hosts it keeps, its own included
    lost: int = 0  # routes lost to other services (each logged)

    @property
    def servers(self) -> tuple[tuple[Instance, Reading, int], ...]:
        return tuple(p for p in self.published if 1 <= p[0].port <= 65535)


def entitle(name: str, found: Sequence[Instance], interp: Interpretation, env: Env) -> Entitled:
    """One service on its own, before the services' tcp ports and routes are compared."""
    readings = [(i, read_tags(i.tags, interp)) for i in found]
    tagged = [(i, r) for i, r in readings if r is not None]
    enabled = [(i, r) for i, r in tagged if r.enabled and env.publishes(r.group)]
    malformed = [(i, r) for i, r in tagged if r.malformed]
    # Instances of other groups are not this load balancer's: whether their malformed
    # tags are logged here, the README does not say.
    logged = sum(env.publishes(r.group) for _, r in malformed)
    if not enabled:
        if not malformed:
            return Entitled(frozenset({IGNORED}))  # nothing asks to be published here
        # Every instance that asks to be published is malformed: skipped. Malformed
        # instances none of which clearly asks here (HAPROXY.ENABLE=yes, only a bad tag,
        # another group): the contract does not say whether they ask, so skipping or
        # ignoring will do.
        asks = any(r.asks and env.publishes(r.group) for _, r in malformed)
        return Entitled(frozenset({SKIPPED} if asks else {SKIPPED, IGNORED}))
    if not DNS_LABEL.fullmatch(name):
        return Entitled(frozenset({SKIPPED}))
    statuses = {PASSING, WARNING} if env.include_warning else {PASSING}
    published = [(i, r) for i, r in enabled if i.status in statuses]
    sayers = [(i, r) for i, r in published if interp.warning_say or i.status == PASSING]
    # Only published instances have a say; while none is, the newest one has it.
    _, leader = max(sayers or enabled, key=lambda ir: ir[0].create_index)
    if leader.shape.protocol == "tcp" and leader.shape.port is None:
        return Entitled(frozenset({SKIPPED}))
    asking = [i for i, r in tagged if (r.enabled and env.publishes(r.group)) or r.malformed]
    dating = {
        "all": found,
        "tagged": [i for i, _ in tagged],
        "asking": asking,
        "enabled": [i for i, _ in enabled],
    }[interp.age]
    return Entitled(
        frozenset({PUBLISHED}),
        shape=leader.shape,
        published=tuple((i, r, consul_weight(i)) for i, r in published),
        age=min(i.create_index for i in dating),
        malformed=logged,
        disagree=len({r.shape for _, r in published}) > 1,
        shape_kept=not sayers,
        outside=sum(r.enabled and not env.publishes(r.group) for _, r in tagged),
    )


def expect(scenario: Scenario, interp: Interpretation) -> dict[str, Entitled]:
    """Every service's entitlement: a tcp port goes to the service that holds it, else to
    the service registered first; the http and stats ports are HAProxy's own. A route
    (host and path) goes to the service whose own host it is, else to the service that
    holds it, else to the service registered first; the others lose it."""
    env = ENVS[scenario.env]
    found = {name: entitle(name, insts, interp, env) for name, insts in scenario.services.items()}
    taken = {SETTINGS.http_port, SETTINGS.stats_port}

    def claim_order(name: str) -> tuple[bool, int, str]:
        port = found[name].shape.port
        return scenario.held.get(port or 0) != name, found[name].age, name

    for name in sorted((n for n, e in found.items() if PUBLISHED in e.outcomes), key=claim_order):
        port = found[name].shape.port
        if port is None:
            continue
        if port in taken:
            found[name] = Entitled(frozenset({SKIPPED}))  # held by another
        else:
            taken.add(port)
    http = {
        n: e for n, e in found.items() if PUBLISHED in e.outcomes and e.shape.protocol == "http"
    }
    own = {n: f"{n}.{DOMAIN}" for n in http}
    claims: dict[Route, list[tuple[tuple[bool, bool, int, str], str]]] = {}
    for n, e in http.items():
        for host in {own[n], *e.shape.hosts}:
            route = (host, e.shape.path)
            rank = (host != own[n], scenario.routes.get(route) != n, e.age, n)
            claims.setdefault(route, []).append((rank, n))
    winners = {route: min(c)[1] for route, c in claims.items()}
    reserved = set(own.values()) if interp.own_host_whole else set()
    if interp.own_reserved:
        reserved |= {f"{n}.{DOMAIN}" for n in scenario.services if n not in http}
    for n, e in http.items():
        asked = {own[n], *e.shape.hosts}
        kept = frozenset(
            h for h in asked if winners[h, e.shape.path] == n and (h == own[n] or h not in reserved)
        )
        found[n] = dataclasses.replace(e, hosts=kept, lost=len(asked) - len(kept))
    return found

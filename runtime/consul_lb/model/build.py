"""Catalog + settings -> the load balancer to render: published backends and skipped
services with their reasons. Pure: no I/O, deterministic order.

Tags are read per instance (see the README's "Service tags"):

- an instance is published only when it carries ``HAPROXY.ENABLE=true`` and its checks
  pass;
- what HAProxy holds per server (``maxconn``) follows each instance's own tags;
- what must be one per backend (protocol, balance, frontend port) comes from the most
  recently registered passing instance (highest Consul ``CreateIndex``), so that a
  rolling deploy takes effect as its first new instance passes, and the service is never
  unpublished because its instances disagree. Instances that do not pass have no say.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable

from consul_lb.consul.catalog import PASSING, WARNING, Catalog, Instance, Service
from consul_lb.env_values import DNS_LABEL, is_dns_name
from consul_lb.model.claims import Candidate, Holders, resolve
from consul_lb.model.tags import EXTERNAL, PREFIX, ServiceOptions, TagError, parse_tags, printable
from consul_lb.model.types import Backend, LoadBalancer, Server, Skipped
from consul_lb.settings import Settings

# `\Z`, not `$`: `$` also matches before a trailing newline, which would end the line
# in haproxy.cfg.
SERVER_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
# One label of a host name; HAProxy refuses empty labels ("a..b") at parse time.
HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# ServiceOptions fields that are one per backend (the rest are per server or per
# instance); named as the tags users write, for the log line on disagreement.
BACKEND_OPTIONS = {
    "protocol": "HAPROXY.PROTOCOL",
    "balance": "HAPROXY.BACKEND.BALANCE",
    "frontend_port": "HAPROXY.FRONTEND.PORT",
    "hosts": "HAPROXY.FRONTEND.HOSTS",
    "path": "HAPROXY.FRONTEND.PATH",
    "strip_path": "HAPROXY.BACKEND.STRIP_PATH",
    "sticky": "HAPROXY.BACKEND.STICKY",
    "healthcheck_path": "HAPROXY.BACKEND.HEALTHCHECK.PATH",
    "allow": "HAPROXY.FRONTEND.ALLOW",
    "redirect_https": "HAPROXY.FRONTEND.REDIRECT_HTTPS",
    "hsts": "HAPROXY.FRONTEND.HSTS",
    "backend_tls": "HAPROXY.BACKEND.TLS",
    "acme": "HAPROXY.FRONTEND.ACME",
}
# HAProxy's server weights are 0..256 ("weight" in HAProxy's configuration manual).
MAX_WEIGHT = 256


def wants(name: str, tags: tuple[str, ...]) -> bool:
    """Services the HAProxy mode watches: any with an HAPROXY.* tag on some instance, so
    that a published service with a bad tag is reported rather than silently ignored."""
    return any(t.startswith(PREFIX) for t in tags)


def watched(settings: Settings) -> Callable[[str, tuple[str, ...]], bool]:
    """The services this load balancer watches, from the tags Consul lists for them
    (the union over their instances): those with an HAPROXY.* tag, in its groups
    (HAPROXY_GROUPS). An instance without HAPROXY.GROUP is in group "external": a load
    balancer that publishes it must watch every tagged service, since the union of
    tags cannot show that no instance is untagged."""
    groups = set(settings.groups)
    every = "*" in groups or EXTERNAL in groups
    group_tag = f"{PREFIX}GROUP="

    def wanted(name: str, tags: tuple[str, ...]) -> bool:
        if not wants(name, tags):
            return False
        return every or any(t.startswith(group_tag) and t[len(group_tag) :] in groups for t in tags)

    return wanted


IPV4 = re.compile(
    r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}\Z"
)


def valid_address(address: str) -> bool:
    if IPV4.match(address):  # the usual case, without ipaddress's cost
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return 0 < len(address) <= 253 and all(
            HOST_LABEL.match(label) for label in address.split(".")
        )
    # Python accepts any text as an IPv6 scope ("fe80::1%<anything>", newlines included);
    # it would be written into haproxy.cfg as is, so addresses with a scope are refused.
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None)


def server_name(instance: Instance) -> str:
    """A stable server name: the Consul service ID when HAProxy accepts it as a name,
    else a short digest of node and ID (stable across renders either way)."""
    if SERVER_NAME.match(instance.service_id):
        return instance.service_id
    digest = hashlib.sha1(f"{instance.node}/{instance.service_id}".encode()).hexdigest()
    return f"srv-{digest[:12]}"


def consul_weight(inst: Instance) -> int:
    """The instance's Consul weight for its current status (Consul's ``Weights``)."""
    return inst.weight_warning if inst.status == WARNING else inst.weight_passing


def haproxy_weights(raw: Iterable[int]) -> dict[int, int]:
    """Consul weights (1..65535, 0 allowed for Warning) -> HAProxy weights (0..256):
    as they are when they fit, else scaled in proportion, no positive weight below 1."""
    found = set(raw)
    top = max(found, default=0)
    if top <= MAX_WEIGHT:
        return {w: max(0, w) for w in found}
    return {w: 0 if w <= 0 else max(1, round(w * MAX_WEIGHT / top)) for w in found}


def servers_of(
    instances: Iterable[tuple[Instance, ServiceOptions]],
) -> tuple[tuple[Server, ...], list[str]]:
    """Servers of the published instances, and one problem line per instance that had
    to be left out."""
    servers: list[Server] = []
    problems: list[str] = []
    used: set[str] = set()
    ordered = list(instances)  # in the service's order: sorted by the catalog
    weights = haproxy_weights(consul_weight(i) for i, _ in ordered)
    for inst, options in ordered:
        if not valid_address(inst.address):
            problems.append(
                f"instance {printable(inst.service_id)} has an invalid address "
                f"{printable(inst.address)}"
            )
            continue
        if not 0 < inst.port < 65536:
            problems.append(
                f"instance {printable(inst.service_id)} has an invalid port {inst.port}"
            )
            continue
        name = server_name(inst)
        if name in used:
            # The same service ID on two nodes: tell them apart by node, stably.
            base = f"{name[:50]}-{hashlib.sha1(inst.node.encode()).hexdigest()[:8]}"
            name, n = base, 2
            while name in used:  # still taken (a crafted ID, or a repeated instance)
                name, n = f"{base}-{n}", n + 1
        used.add(name)
        servers.append(
            Server(name, inst.address, inst.port, options.maxconn, weights[consul_weight(inst)])
        )
    return tuple(sorted(servers, key=lambda s: s.name)), problems


def candidate(service: Service, settings: Settings) -> Candidate | None:
    """The backend one service gives, or why it is skipped; None when no instance of it
    asks to be published."""
    parsed: list[tuple[Instance, ServiceOptions]] = []
    errors: list[tuple[Instance, str]] = []
    for inst in service.instances:
        if not any(t.startswith(PREFIX) for t in inst.tags):
            continue
        try:
            options = parse_tags(inst.tags)
        except TagError as exc:
            # Reported even when the instance is not enabled: a typo in the tag that
            # enables it ("HAPROXY.ENABLE=yes") must not pass in silence.
            errors.append((inst, str(exc)))
            continue
        if options.enabled and ("*" in settings.groups or options.group in settings.groups):
            parsed.append((inst, options))
    if not parsed and not errors:
        return None  # nothing of it asks to be published here
    age = min(i.create_index for i, _ in [*parsed, *errors])
    reason = _check_name(service.name, settings)
    if reason is None and not parsed:
        reason = errors[0][1]  # every instance that asks to be published is malformed
    if reason is not None:
        return Candidate(None, Skipped(service.name, reason), (), age)
    problems = [f"instance {printable(i.service_id)}: {why}" for i, why in errors]
    statuses = {PASSING, WARNING} if settings.health_warning == "include" else {PASSING}
    published = [(i, o) for i, o in parsed if i.status in statuses]
    # The backend's own options: from the newest instance that passes (or, while none
    # passes, the newest one, so that the backend keeps its shape).
    leader, options = max(
        published or parsed, key=lambda io: (io[0].create_index, io[0].service_id)
    )
    distinct = {id(o): o for _, o in published}  # equal tag sets: one parsed object
    disagree = (
        [
            tag
            for attr, tag in BACKEND_OPTIONS.items()
            if len({getattr(o, attr) for o in distinct.values()}) > 1
        ]
        if len(distinct) > 1
        else []
    )
    if disagree:
        problems.append(
            f"passing instances disagree on {', '.join(disagree)}: using the most recently "
            f"registered one's ({printable(leader.service_id)})"
        )
    if options.protocol == "tcp" and options.frontend_port is None:
        reason = "tcp service without HAPROXY.FRONTEND.PORT=<port>: it cannot be routed by Host"
        return Candidate(None, Skipped(service.name, reason), tuple(problems), age)
    servers, bad = servers_of(published)
    problems += bad
    name = f"{service.name}.{settings.domain}"
    http = options.protocol == "http"
    backend = Backend(
        service=service.name,
        name=name,
        protocol=options.protocol,
        balance=options.balance,
        frontend_port=options.frontend_port,
        servers=servers,
        hosts=(name, *(h for h in options.hosts if h != name)) if http else (),
        path=options.path,
        strip_path=options.strip_path,
        sticky=options.sticky,
        healthcheck_path=options.healthcheck_path,
        allow=options.allow,
        redirect_https=options.redirect_https,
        hsts=options.hsts,
        tls=options.backend_tls,
        acme=options.acme,
    )
    return Candidate(backend, None, tuple(f"service {service.name!r}: {p}" for p in problems), age)


def _check_name(name: str, settings: Settings) -> str | None:
    if not DNS_LABEL.match(name):
        return (
            f"service name {name[:80]!r} is not a valid DNS label "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    if not is_dns_name(f"{name}.{settings.domain}"):
        return f"host name {name}.{settings.domain} is longer than 253 characters"
    return None


class Candidates:
    """Remembers each service's candidate while the service stays the same object (or an
    equal one): a change to one service of 5,000 rebuilds one."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[Service, Settings, Candidate | None]] = {}

    def get(self, service: Service, settings: Settings) -> Candidate | None:
        hit = self.known.get(service.name)
        if hit is not None and hit[1] is settings and (hit[0] is service or hit[0] == service):
            return hit[2]
        found = candidate(service, settings)
        self.known[service.name] = (service, settings, found)
        return found

    def forget_except(self, names: set[str]) -> None:
        for name in set(self.known) - names:
            del self.known[name]


def build(
    catalog: Catalog,
    settings: Settings,
    held: Holders | None = None,
    cache: Candidates | None = None,
) -> tuple[LoadBalancer, list[str]]:
    """The load balancer for a catalog, plus problems with single instances or routes
    (left out without skipping their service). ``held`` says which services hold which
    tcp ports and routes in the running load balancer: they keep them."""
    cache = cache or Candidates()
    found = [(s.name, cache.get(s, settings)) for s in catalog.services]
    cache.forget_except({name for name, _ in found})
    candidates = [c for _, c in found if c is not None]
    backends, skipped, problems = resolve(candidates, settings, held or Holders())
    return (
        LoadBalancer(
            tuple(sorted(backends, key=lambda b: b.service)),
            tuple(sorted(skipped, key=lambda s: s.service)),
        ),
        problems,
    )

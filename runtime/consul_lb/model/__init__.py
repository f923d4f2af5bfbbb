"""Catalog + settings -> the load balancer to render: published backends and skipped
services with their reasons. Pure: no I/O, deterministic order."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from consul_lb.consul.catalog import Catalog, Instance, Service
from consul_lb.model.tags import PREFIX, ServiceOptions, TagError, parse_tags, printable
from consul_lb.settings import DNS_LABEL, Settings, is_dns_name

# `\Z`, not `$`: `$` also matches before a trailing newline, which would end the line
# in haproxy.cfg.
SERVER_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
# One label of a host name; HAProxy refuses empty labels ("a..b") at parse time.
HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    port: int


@dataclass(frozen=True)
class Backend:
    service: str
    name: str  # <service>.<domain>: the backend's name and the host it answers for
    protocol: str
    balance: str
    maxconn: int | None
    frontend_port: int | None
    servers: tuple[Server, ...]


@dataclass(frozen=True)
class Skipped:
    service: str
    reason: str


@dataclass(frozen=True)
class LoadBalancer:
    backends: tuple[Backend, ...]
    skipped: tuple[Skipped, ...]

    @property
    def http_backends(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.protocol == "http")

    @property
    def tcp_backends(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.protocol == "tcp")


def wants(name: str, tags: tuple[str, ...]) -> bool:
    """Services the HAProxy mode watches: any with an HAPROXY.* tag, so that a published
    service with a bad tag is reported rather than silently ignored."""
    return any(t.startswith(PREFIX) for t in tags)


def valid_address(address: str) -> bool:
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


def servers_of(service: Service) -> tuple[tuple[Server, ...], list[str]]:
    """Servers of a service, and one problem line per instance that had to be left out."""
    servers: list[Server] = []
    problems: list[str] = []
    used: set[str] = set()
    for inst in sorted(service.instances):
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
        servers.append(Server(name, inst.address, inst.port))
    return tuple(sorted(servers, key=lambda s: s.name)), problems


def build(catalog: Catalog, settings: Settings) -> tuple[LoadBalancer, list[str]]:
    """The load balancer for a catalog, plus problems with single instances (which are
    left out without skipping their service)."""
    backends: list[Backend] = []
    skipped: list[Skipped] = []
    instance_problems: list[str] = []
    ports_used: dict[int, str] = {
        settings.http_port: "the http frontend",
        settings.stats_port: "the stats frontend",
    }
    for service in sorted(catalog.services, key=lambda s: s.name):
        try:
            options = parse_tags(service.tags)
        except TagError as exc:
            skipped.append(Skipped(service.name, str(exc)))
            continue
        if not options.enabled:
            continue
        reason = _check_service(service.name, options, settings, ports_used)
        if reason:
            skipped.append(Skipped(service.name, reason))
            continue
        servers, problems = servers_of(service)
        instance_problems += [f"service {service.name!r}: {p}" for p in problems]
        if options.frontend_port is not None:
            ports_used[options.frontend_port] = f"service {service.name!r}"
        backends.append(
            Backend(
                service=service.name,
                name=f"{service.name}.{settings.domain}",
                protocol=options.protocol,
                balance=options.balance,
                maxconn=options.maxconn,
                frontend_port=options.frontend_port,
                servers=servers,
            )
        )
    return LoadBalancer(tuple(backends), tuple(skipped)), instance_problems


def _check_service(
    name: str, options: ServiceOptions, settings: Settings, ports_used: dict[int, str]
) -> str | None:
    if not DNS_LABEL.match(name):
        return (
            f"service name {name[:80]!r} is not a valid DNS label "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    if not is_dns_name(f"{name}.{settings.domain}"):
        return f"host name {name}.{settings.domain} is longer than 253 characters"
    if options.protocol == "tcp":
        if options.frontend_port is None:
            return "tcp service without HAPROXY.FRONTEND.PORT=<port>: it cannot be routed by Host"
        owner = ports_used.get(options.frontend_port)
        if owner:
            return f"HAPROXY.FRONTEND.PORT={options.frontend_port} is already used by {owner}"
    return None

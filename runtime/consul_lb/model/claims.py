"""What services claim against each other: tcp frontend ports and routes (a host, and a
path prefix on it). A claim stays with the service that holds it in the running load
balancer; between newcomers, the service registered first wins (its oldest instance's
Consul CreateIndex), then the name. A service's own host (<service>.<domain>) is its
own: an alias cannot take it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from consul_lb.model.types import Backend, LoadBalancer, Skipped
from consul_lb.settings import Settings

Route = tuple[str, str | None]  # (host, path prefix or None)


@dataclass(frozen=True)
class Candidate:
    """One service on its own, before services are checked against each other."""

    backend: Backend | None
    skipped: Skipped | None
    problems: tuple[str, ...]
    age: int  # CreateIndex of its oldest instance: who was there first


@dataclass(frozen=True)
class Holders:
    """Who holds what in the running load balancer."""

    ports: dict[int, str] = field(default_factory=dict)
    routes: dict[Route, str] = field(default_factory=dict)

    @classmethod
    def of(cls, lb: LoadBalancer | None) -> Holders:
        return cls(lb.ports, lb.routes) if lb else cls()


def resolve(
    candidates: list[Candidate], settings: Settings, held: Holders
) -> tuple[list[Backend], list[Skipped], list[str]]:
    """The backends that keep their claims, the services skipped for a port, and one
    problem line per route a service lost."""
    skipped = [c.skipped for c in candidates if c.skipped is not None]
    problems = [p for c in candidates for p in c.problems]
    contenders = [c for c in candidates if c.backend is not None]
    ports: dict[int, str] = {
        settings.http_port: "the http frontend",
        settings.stats_port: "the stats frontend",
    }
    if settings.tls.enabled:
        ports[settings.tls.https_port] = "the https frontend"

    def port_order(c: Candidate) -> tuple[int, int, str]:
        b = c.backend
        assert b is not None
        holds = b.frontend_port is not None and held.ports.get(b.frontend_port) == b.service
        return (0 if holds else 1, c.age, b.service)

    kept: list[Candidate] = []
    for c in sorted(contenders, key=port_order):
        b = c.backend
        assert b is not None
        if b.frontend_port is not None:
            owner = ports.get(b.frontend_port)
            if owner is not None:
                reason = f"HAPROXY.FRONTEND.PORT={b.frontend_port} is held by {owner}"
                skipped.append(Skipped(b.service, reason))
                continue
            ports[b.frontend_port] = f"service {b.service!r}"
        kept.append(c)
    backends, lost = _routes(kept, held)
    return backends, skipped, problems + lost


def _routes(kept: list[Candidate], held: Holders) -> tuple[list[Backend], list[str]]:
    """Each route to one service; a service keeps the backend with the routes it won."""
    claims: dict[Route, list[tuple[tuple[int, int, int, str], str]]] = {}
    for c in kept:
        b = c.backend
        assert b is not None
        for route in b.routes:
            own = route[0] == b.hosts[0]
            holds = held.routes.get(route) == b.service
            rank = (0 if own else 1, 0 if holds else 1, c.age, b.service)
            claims.setdefault(route, []).append((rank, b.service))
    winners = {route: min(contenders)[1] for route, contenders in claims.items()}
    backends: list[Backend] = []
    lost: list[str] = []
    for c in kept:
        b = c.backend
        assert b is not None
        hosts = tuple(h for h in b.hosts if winners.get((h, b.path)) == b.service)
        for h in b.hosts:
            winner = winners.get((h, b.path))
            if winner != b.service:
                where = h + (b.path or "")
                lost.append(f"service {b.service!r}: route {where} is held by service {winner!r}")
        backends.append(replace(b, hosts=hosts) if hosts != b.hosts else b)
    return backends, lost

"""What the load balancer publishes: typed, immutable, comparable values. The template
renders them; the runtime API and the server-state rules compare them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Server:
    """One HAProxy ``server`` line: a passing instance of a service."""

    name: str  # the Consul service ID when HAProxy accepts it as a name
    address: str
    port: int
    maxconn: int | None = None  # HAPROXY.BACKEND.MAXCONN of this instance
    weight: int = 1  # HAProxy's weight (0..256), from Consul's Weights


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    name: str  # <service>.<domain>: the backend's name and the host it answers for
    protocol: str
    balance: str
    frontend_port: int | None
    servers: tuple[Server, ...]
    # Hosts it answers for (its own name first, then aliases), and the path prefix it
    # takes on them (None: every path not taken by another service).
    hosts: tuple[str, ...] = ()
    path: str | None = None
    strip_path: bool = False
    sticky: bool = False
    healthcheck_path: str | None = None
    allow: tuple[str, ...] = ()  # client networks; empty: everyone
    redirect_https: bool = False  # HAPROXY.FRONTEND.REDIRECT_HTTPS
    hsts: int | None = None  # HAPROXY.FRONTEND.HSTS (max-age, seconds)
    tls: bool = False  # HAPROXY.BACKEND.TLS: TLS to the servers
    acme: bool = False  # HAPROXY.FRONTEND.ACME: its hosts get a certificate from ACME

    @property
    def routes(self) -> tuple[tuple[str, str | None], ...]:
        """(host, path prefix) pairs this backend is reached by."""
        return tuple((h, self.path) for h in self.hosts)


@dataclass(frozen=True, slots=True)
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

    def backend(self, service: str) -> Backend | None:
        return next((b for b in self.backends if b.service == service), None)

    @property
    def routes(self) -> dict[tuple[str, str | None], str]:
        """(host, path prefix) -> the service reached there."""
        return {r: b.service for b in self.http_backends for r in b.routes}

    @property
    def ports(self) -> dict[int, str]:
        """tcp frontend port -> the service that holds it."""
        return {b.frontend_port: b.service for b in self.tcp_backends if b.frontend_port}

    def without(self, reasons: dict[str, str]) -> LoadBalancer:
        """This load balancer with the named services moved to the skipped list."""
        return LoadBalancer(
            tuple(b for b in self.backends if b.service not in reasons),
            tuple(
                sorted(
                    [*self.skipped, *(Skipped(name, why) for name, why in reasons.items())],
                    key=lambda s: s.service,
                )
            ),
        )

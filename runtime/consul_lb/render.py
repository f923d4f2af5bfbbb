"""Jinja2 rendering: strict (an undefined name is an error, not an empty string) and
deterministic (the same input gives byte-identical text).

``haproxy.cfg.j2`` renders the whole file; each service backend is rendered by
``backend.cfg.j2`` and remembered, so that a change to one service of thousands renders
one section. Both can be replaced by an operator (``CONSUL_LB_TEMPLATES``) and include
the shipped ones as ``default/<name>``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from consul_lb.haproxy.limits import Limits
from consul_lb.maps import HEALTH_MAP, HOSTS_MAP, ROUTING_MAPS, WAITING, routing_maps
from consul_lb.model import Backend, LoadBalancer, Server
from consul_lb.settings import Settings
from consul_lb.tls.certs import TlsView

# The shipped templates: in the images under /usr/share, from a checkout next to the
# package.
SHIPPED_TEMPLATES = next(
    (
        p
        for p in (
            Path("/usr/share/consul-lb/templates"),
            Path(__file__).resolve().parents[2] / "templates",
        )
        if p.is_dir()
    ),
    Path("templates"),
)
HAPROXY_TEMPLATE = "haproxy.cfg.j2"
BACKEND_TEMPLATE = "backend.cfg.j2"
# Health-check timing of every server, in the rendered file (on default-server) and for
# servers added through the runtime API (which do not inherit default-server).
CHECK_OPTIONS = "inter 10s fall 1"
# A server line of a rendered file (what the runtime API can change without a reload).
SERVER_LINE = re.compile(r"^[ \t]+server[ \t].*\n?", re.MULTILINE)


def server_address(address: str) -> str:
    """HAProxy reads the last colon of an address as the port separator; say IPv6
    explicitly so that no reader has to know that."""
    return f"ipv6@{address}" if ":" in address else address


def server_options(
    server: Server, checks: bool = True, dynamic: bool = False, tls: str = ""
) -> str:
    """What follows ``<name> <addr>:<port>`` on a server line. ``dynamic`` adds what a
    rendered server gets from ``default-server``, which ``add server`` does not read;
    ``tls`` is ``server_tls(...)`` for a backend with HAPROXY.BACKEND.TLS, else empty."""
    parts = [CHECK_OPTIONS] if dynamic else []
    if checks:
        parts.append("check")
    if server.maxconn is not None:
        parts.append(f"maxconn {server.maxconn}")
    if server.weight != 1:
        parts.append(f"weight {server.weight}")
    if tls:
        parts.append(tls)
    return " ".join(parts)


def server_tls(ca_file: Path | None) -> str:
    """The server options of TLS to instances (HAPROXY.BACKEND.TLS): verified against
    HAPROXY_BACKEND_CA_FILE, or not verified without one. Health checks use TLS too."""
    return f"ssl verify required ca-file {ca_file}" if ca_file else "ssl verify none"


def sticky_key(settings: Settings) -> str:
    """HAProxy's dynamic-cookie-key: HAPROXY_STICKY_KEY, else one derived from
    HAPROXY_DOM (the same on every load balancer of the domain, but guessable)."""
    if settings.sticky_key:
        return settings.sticky_key
    return hashlib.sha256(f"consul-lb sticky cookies {settings.domain}".encode()).hexdigest()[:32]


def path_regex(prefix: str) -> str:
    """``prefix`` (letters, digits and ``._~-/`` only, see model/values.py) as a
    regular expression matching itself: only ``.`` means something else there."""
    return prefix.replace(".", "\\.")


def environment(search_path: Sequence[Path]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader([str(p) for p in search_path]),
                jinja2.PrefixLoader({"default": jinja2.FileSystemLoader(str(SHIPPED_TEMPLATES))}),
            ]
        ),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # the output is haproxy.cfg, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["server_address"] = server_address
    env.filters["path_regex"] = path_regex
    env.globals["server_options"] = server_options
    env.globals["check_options"] = CHECK_OPTIONS
    env.globals["server_tls"] = server_tls
    return env


@dataclass(frozen=True)
class HaproxyFiles:
    """What HAProxy reads: the configuration and the map files next to it (name ->
    text; see maps.py)."""

    config: str
    maps: dict[str, str] = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        return {"haproxy.cfg": self.config, **self.maps}

    @property
    def hosts_map(self) -> str:
        return self.maps.get(HOSTS_MAP, "")

    @property
    def health_map(self) -> str:
        return self.maps.get(HEALTH_MAP, "")

    def with_map(self, name: str, text: str) -> HaproxyFiles:
        return HaproxyFiles(self.config, {**self.maps, name: text})

    def structure(self) -> str:
        """The configuration without its server lines: equal structures differ only in
        what the runtime API can change."""
        return SERVER_LINE.sub("", self.config)


class Renderer:
    """Renders the load balancer's files; remembers each backend's section."""

    def __init__(
        self,
        settings: Settings,
        paths: dict[str, str],
        template_dirs: Sequence[Path] = (),
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.env = environment([*template_dirs, SHIPPED_TEMPLATES])
        # Each backend's section, by the backend object's identity (a Backend is kept
        # while its service does not change; hashing thousands of them would cost more
        # than rendering the one that changed), with what else it depends on.
        self.sections: dict[int, tuple[Backend, bool, TlsView, str]] = {}
        # Set by the TLS manager (consul_lb/tls/manager.py) before each render.
        self.tls = TlsView()

    def render(self, lb: LoadBalancer, limits: Limits, waiting: bool = False) -> HaproxyFiles:
        """The files for ``lb``; ``waiting`` makes the health URI fail until the first
        complete read of Consul. Raises whatever the template raises (jinja2 errors, or
        any exception from an operator's template): the caller contains it."""
        sections: dict[int, tuple[Backend, bool, TlsView, str]] = {}
        backend_template = self.env.get_template(BACKEND_TEMPLATE)

        by_name = {e[0].name: e for e in self.sections.values()}

        def backend_section(b: Backend) -> str:
            found = sections.get(id(b)) or self.sections.get(id(b))
            if found is None or found[0] is not b:
                found = by_name.get(b.name)  # an equal backend made again, or a new one
            if found is not None and found[1:3] == (limits.checks, self.tls) and found[0] == b:
                text = found[3]
            else:
                text = backend_template.render(self._context(lb, limits, b=b))
            sections[id(b)] = (b, limits.checks, self.tls, text)
            return text

        # All of them in one string for the shipped template (one Jinja call per backend
        # costs more than the join); an operator's template may call backend_section(b).
        context = self._context(
            lb,
            limits,
            backend_section=backend_section,
            backend_sections=lambda: "".join(backend_section(b) for b in lb.backends),
        )
        config = self.env.get_template(HAPROXY_TEMPLATE).render(context)
        self.sections = sections
        health = f"{WAITING} 1\n" if waiting else ""
        return HaproxyFiles(config, {**routing_maps(lb), HEALTH_MAP: health})

    def _context(self, lb: LoadBalancer, limits: Limits, **extra: Any) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "limits": limits,
            "lb": lb,
            "paths": self.paths,
            "maps": {name.removesuffix(".map"): name for name in (*ROUTING_MAPS, HEALTH_MAP)},
            "sticky_key": sticky_key(self.settings),
            "tls": self.tls,
            **extra,
        }

"""Jinja2 rendering: strict (an undefined name is an error, not an empty string) and
deterministic (the same input gives byte-identical text)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from consul_lb.haproxy.limits import Limits
from consul_lb.model import LoadBalancer
from consul_lb.settings import Settings

# The shipped templates: in the images under /usr/share, from a checkout next to the
# package. An operator's own directory (CONSUL_LB_TEMPLATES) comes first; its templates
# can include the shipped ones as "default/<name>".
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
OPERATOR_TEMPLATES = [Path(p) for p in os.environ.get("CONSUL_LB_TEMPLATES", "").split(":") if p]
TEMPLATE_DIRS = (*OPERATOR_TEMPLATES, SHIPPED_TEMPLATES)
HAPROXY_TEMPLATE = "haproxy.cfg.j2"
HOSTS_MAP = "hosts.map"


def server_address(address: str) -> str:
    """HAProxy reads the last colon of an address as the port separator; say IPv6
    explicitly so that no reader has to know that."""
    return f"ipv6@{address}" if ":" in address else address


def environment(search_path: list[Path] | tuple[Path, ...]) -> jinja2.Environment:
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
    return env


@dataclass(frozen=True)
class HaproxyFiles:
    """What HAProxy reads: the configuration and the Host -> backend map next to it."""

    config: str
    hosts_map: str

    def files(self) -> dict[str, str]:
        return {"haproxy.cfg": self.config, HOSTS_MAP: self.hosts_map}


def render_haproxy(
    lb: LoadBalancer,
    settings: Settings,
    limits: Limits,
    paths: dict[str, str],
    env: jinja2.Environment | None = None,
) -> HaproxyFiles:
    env = env or environment(TEMPLATE_DIRS)
    context: dict[str, Any] = {
        "settings": settings,
        "limits": limits,
        "lb": lb,
        "paths": paths,
        "hosts_map": HOSTS_MAP,
    }
    config = env.get_template(HAPROXY_TEMPLATE).render(context)
    # One line per published http service: "<host> <backend>", sorted (HAProxy's map
    # format; the host is the backend's name).
    hosts = "".join(f"{b.name} {b.name}\n" for b in sorted(lb.http_backends, key=lambda b: b.name))
    return HaproxyFiles(config=config, hosts_map=hosts)

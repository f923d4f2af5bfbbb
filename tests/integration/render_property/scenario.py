"""The shared ground of the property test: the environments a load balancer runs under,
the scenario (a catalog plus what the running load balancer holds) and the marker every
hostile string carries; a tag's values, and the DNS label, as both the strategies and
the oracle read them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from consul_lb.consul.catalog import Instance
from consul_lb.haproxy.files import Paths
from consul_lb.model.claims import Holders
from consul_lb.settings import Settings, from_env

DOMAIN = "example.com"
PATHS = Paths(Path("/var/lib/consul-lb")).template_paths()
# Every hostile string contains this. '!' is valid in no field (DNS label, tag value,
# address, server name), so a hostile string can never become valid by accident, and
# the marker's absence from the output proves that no hostile string got through. (A
# path may hold '!' by RFC 3986: hostile paths also carry a character no path can.)
MARK = "EVIL!"
ENABLE = "HAPROXY.ENABLE=true"
# HAPROXY_STICKY_KEY: 8..128 characters; this one has every punctuation the variable
# takes (it is written into haproxy.cfg as one word).
STICKY_KEY = "k3y.$%&()*+,-/:;<=>?@[]^_`{|}~"


@dataclass(frozen=True)
class Env:
    """A load balancer's environment, and what the README's "Environment" table makes of
    it: the groups it publishes (``*``: all), whether instances in warning are published,
    the sticky cookies' key (None: one derived from HAPROXY_DOM)."""

    name: str
    groups: frozenset[str]
    include_warning: bool
    sticky_key: str | None
    settings: Settings

    def publishes(self, group: str | None) -> bool:
        """Whether an instance of ``group`` (None: unreadable) is published here."""
        return "*" in self.groups or (group is not None and group in self.groups)


def make_env(name: str, **variables: str) -> Env:
    return Env(
        name,
        frozenset(g.strip() for g in variables.get("HAPROXY_GROUPS", "*").split(",")),
        variables.get("HAPROXY_HEALTH_WARNING", "exclude") == "include",
        variables.get("HAPROXY_STICKY_KEY"),
        from_env({"HAPROXY_DOM": DOMAIN, **variables}),
    )


ENVS = (
    make_env("defaults"),
    make_env("warning included", HAPROXY_HEALTH_WARNING="include"),
    make_env("external, keyed", HAPROXY_GROUPS="external", HAPROXY_STICKY_KEY=STICKY_KEY),
    make_env(
        "internal and edge, warning included",
        HAPROXY_GROUPS="internal,edge",
        HAPROXY_HEALTH_WARNING="include",
    ),
    make_env(
        "external and internal, keyed",
        HAPROXY_GROUPS="external, internal",
        HAPROXY_HEALTH_WARNING="exclude",
        HAPROXY_STICKY_KEY="0123456789abcdef",
    ),
)
SETTINGS = ENVS[0].settings

Route = tuple[str, str | None]  # (host, path prefix or None), as Holders names them


@dataclass(frozen=True)
class Scenario:
    """A catalog as the watcher reads it (service name -> its instances, each with its
    own tags), the tcp ports and routes the running load balancer holds (-> service),
    and the environment (an index in ENVS)."""

    services: dict[str, list[Instance]]
    held: dict[int, str] = field(default_factory=dict)
    routes: dict[Route, str] = field(default_factory=dict)
    env: int = 0

    @property
    def holders(self) -> Holders:
        return Holders(ports=self.held, routes=self.routes)


DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


def tag_values(tags: Sequence[str]) -> dict[str, list[str]]:
    """``HAPROXY.<key>=<value>`` tags without the marker: key -> values."""
    values: dict[str, list[str]] = {}
    for t in tags:
        key, sep, value = t.removeprefix("HAPROXY.").partition("=")
        if t.startswith("HAPROXY.") and sep and MARK not in t:
            values.setdefault(key, []).append(value)
    return values

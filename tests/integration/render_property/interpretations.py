"""The oracle's reading of the README, part one: the points where the README leaves a
choice open (each choice one Interpretation), and each tag value parsed under it."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from consul_lb.consul.catalog import WARNING

from tests.integration.render_property.scenario import DNS_LABEL, DOMAIN, ENVS, Scenario, tag_values
from tests.integration.render_property.strategies import HTTP_TAGS
from tests.integration.render_property.values import BALANCE_ARG, BALANCE_SIMPLE

INT_VALUE = re.compile(r"[1-9][0-9]{0,6}", re.ASCII)
PATH_VALUE = re.compile(r"(/[A-Za-z0-9._~-]+)+", re.ASCII)
GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*", re.ASCII)
# The README: "uri, hdr and url_param read HTTP: http services only".
HTTP_ONLY = re.compile(r"uri|hdr\(.*|url_param .*")
PUBLISHED, SKIPPED, IGNORED = "published", "skipped", "ignored"
MAX_ITEMS = 32  # README: hosts and networks, "at most 32"
HAPROXY_MAX_WEIGHT = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Meaning = bool | int | str | frozenset[str] | frozenset[Network]


@dataclass(frozen=True)
class Interpretation:
    """Where the README leaves a choice, one way to take it. An example passes when the
    load balancer is what one whole interpretation entitles it to. The first value of
    each field is tried first (see ALTERNATIVES); a field is varied only when the example
    holds something it decides (see ``interpretations``).

    - ``strict_duplicates``: are ``HAPROXY.ENABLE=true`` and ``HAPROXY.ENABLE=TRUE`` (or
      ``HOSTS=a.org,b.org`` and ``HOSTS=b.org,a.org``) on one instance conflicting tags
      (a malformed instance) or the same tag twice?
    - ``age``: "at start, the one registered first gets it [the tcp port, the route]":
      registered first by which of its instances: any (``all``), any with an
      ``HAPROXY.*`` tag (``tagged``), any that asks to be published here or is malformed
      (``asking``), or any that is published here when it passes (``enabled``)?
    - ``host_case``: is an upper-case host (``WWW.Example.org``) that host (Host headers
      are lower-cased), or malformed?
    - ``list_spaces``, ``list_empty``: ``<host>[,<host>...]`` and ``<cidr>[,<cidr>...]``
      do not say whether spaces around items (``a.org, b.org``) or empty items
      (``a.org,``) are tolerated or malformed;
    - ``list_union``: are two ``HOSTS`` (or ``ALLOW``) tags on one instance their union,
      or conflicting tags?
    - ``single_label``: is a host of one label (``localhost``, ``*.com``) a host?
    - ``bare_address``, ``host_bits``: is ``10.1.2.3`` a ``<cidr>`` (10.1.2.3/32), and
      ``10.0.0.1/8`` (as 10.0.0.0/8)?
    - ``trailing_slash``: is ``HAPROXY.FRONTEND.PATH=/api/`` the prefix /api, or malformed?
    - ``health_root``: is ``HAPROXY.BACKEND.HEALTHCHECK.PATH=/`` a ``/<path>``?
    - ``tcp_http``: the routing tags that read HTTP (hosts, path, strip, sticky, health
      check) on a tcp instance: malformed when present (``present``) or when they would
      do something (``effective``), ignored (``ignored``), or ignored but for the health
      check, which HAProxy can send to a tcp backend (``applied``)?
    - ``strip_alone``: ``HAPROXY.BACKEND.STRIP_PATH=true`` without a path: nothing to
      strip (ignored), or malformed?
    - ``warning_say``: with ``HAPROXY_HEALTH_WARNING=include``, does a published instance
      in warning shape the backend ("the most recently registered published instance"),
      or only passing ones ("instances that do not pass have no say")?
    - ``own_host_whole``: "a service's own host is always its own": the route
      (own host, its path) only, or every path on that host (another service's alias
      with another path loses it too)?
    - ``own_reserved``: is the own host of a service that is in the catalog but not
      published by http here (skipped, a tcp service, nothing enabled) still reserved?
    """

    strict_duplicates: bool = True
    age: str = "all"
    host_case: bool = True
    list_spaces: bool = True
    list_empty: bool = True
    list_union: bool = False
    single_label: bool = False
    bare_address: bool = True
    host_bits: bool = True
    trailing_slash: bool = False
    health_root: bool = True
    tcp_http: str = "present"
    strip_alone: bool = False
    warning_say: bool = True
    own_host_whole: bool = False
    own_reserved: bool = False


ALTERNATIVES: dict[str, tuple[object, ...]] = {
    "host_case": (True, False),
    "list_spaces": (True, False),
    "list_empty": (True, False),
    "list_union": (False, True),
    "single_label": (False, True),
    "bare_address": (True, False),
    "host_bits": (True, False),
    "trailing_slash": (False, True),
    "health_root": (True, False),
    "tcp_http": ("present", "effective", "ignored", "applied"),
    "strip_alone": (False, True),
    "warning_say": (True, False),
    "own_host_whole": (False, True),
    "own_reserved": (False, True),
}
BASE_INTERPRETATIONS = [
    Interpretation(strict, age)
    for strict, age in itertools.product((True, False), ("all", "tagged", "asking", "enabled"))
]


def open_choices(scenario: Scenario) -> list[str]:
    """The fields of Interpretation that may decide something in this example (a rough
    over-estimate: varying a field that decides nothing only costs time)."""
    env = ENVS[scenario.env]
    own_hosts = {f"{n}.{DOMAIN}" for n in scenario.services}
    found: set[str] = set()
    for insts in scenario.services.values():
        for i in insts:
            values = tag_values(i.tags)
            hosts, allow = values.get("FRONTEND.HOSTS", []), values.get("FRONTEND.ALLOW", [])
            for v in hosts + allow:
                found |= {"list_spaces"} if " " in v else set()
                found |= {"list_empty"} if any(not p.strip(" ") for p in v.split(",")) else set()
            for v in hosts:
                found |= {"host_case"} if re.search("[A-Z]", v) else set()
                for h in (p.strip(" ").lower() for p in v.split(",")):
                    found |= {"single_label"} if h and "." not in h.removeprefix("*.") else set()
                    found |= {"own_host_whole", "own_reserved"} if h in own_hosts else set()
            for x in (p.strip(" ") for v in allow for p in v.split(",")):
                found |= {"bare_address"} if "/" not in x and x else set()
                found |= {"host_bits"} if "/" in x else set()
            if any(v.endswith("/") for v in values.get("FRONTEND.PATH", [])):
                found.add("trailing_slash")
            if "/" in values.get("BACKEND.HEALTHCHECK.PATH", []):
                found.add("health_root")
            if "tcp" in values.get("PROTOCOL", []) and any(k in values for k in HTTP_TAGS):
                found.add("tcp_http")
            if "BACKEND.STRIP_PATH" in values and "FRONTEND.PATH" not in values:
                found.add("strip_alone")
            if len(set(hosts)) > 1 or len(set(allow)) > 1:
                found.add("list_union")
            if env.include_warning and i.status == WARNING and "ENABLE" in values:
                found.add("warning_say")
    return [name for name in ALTERNATIVES if name in found]


def interpretations(scenario: Scenario) -> list[Interpretation]:
    choices = open_choices(scenario)
    return [
        dataclasses.replace(base, **dict(zip(choices, values, strict=True)))  # type: ignore[arg-type]
        for values in itertools.product(*(ALTERNATIVES[c] for c in choices))
        for base in BASE_INTERPRETATIONS
    ]


def list_items(value: str, interp: Interpretation) -> list[str] | None:
    items = value.split(",")
    if interp.list_spaces:
        items = [i.strip(" ") for i in items]
    if interp.list_empty:
        items = [i for i in items if i]
    if not items or len(items) > MAX_ITEMS or "" in items:
        return None
    return items


def parse_hosts(value: str, interp: Interpretation) -> Meaning | None:
    """README: hosts besides the own one; ``*.example.com`` takes every host under it."""
    items = list_items(value, interp)
    if items is None:
        return None
    hosts = set()
    for item in items:
        host = item.lower() if interp.host_case and item.isascii() else item
        labels = host.removeprefix("*.").split(".")
        if not (
            len(host) <= 253
            and all(DNS_LABEL.fullmatch(label) for label in labels)
            and (len(labels) >= 2 or interp.single_label)
        ):
            return None
        hosts.add(host)
    return frozenset(hosts)


def parse_networks(value: str, interp: Interpretation) -> Meaning | None:
    """README: ``<cidr>[,<cidr>...]``."""
    items = list_items(value, interp)
    if items is None:
        return None
    networks: set[Network] = set()
    for item in items:
        if "%" in item or not item.isascii():
            return None
        address, slash, prefix = item.partition("/")
        try:
            if not slash:
                if not interp.bare_address:
                    return None
                networks.add(ipaddress.ip_network(ipaddress.ip_address(address)))
                continue
            if not re.fullmatch(r"[0-9]{1,3}", prefix):
                return None
            try:
                networks.add(ipaddress.ip_network(item))
            except ValueError:
                if not interp.host_bits:
                    return None
                networks.add(ipaddress.ip_network(item, strict=False))
        except ValueError:
            return None
    return frozenset(networks)


def parse_path(value: str, interp: Interpretation) -> Meaning | None:
    """README: ``/<prefix>`` (``/api`` takes ``/api`` and ``/api/...``)."""
    if interp.trailing_slash and len(value) > 1 and value.endswith("/"):
        value = value[:-1]
    return value if is_path(value) else None


def parse_health(value: str, interp: Interpretation) -> Meaning | None:
    """README: ``/<path>``, checked with ``GET <path>``."""
    if value == "/":
        return value if interp.health_root else None
    return value if is_path(value) else None


def is_path(value: str) -> bool:
    return bool(PATH_VALUE.fullmatch(value)) and not {".", ".."} & set(value.split("/"))


def parse_bool(value: str, _: Interpretation) -> Meaning | None:
    return (
        value.lower() == "true" if value.isascii() and value.lower() in {"true", "false"} else None
    )


# Tag key -> its meaning, or None when the value is malformed.
PARSERS: dict[str, Callable[[str, Interpretation], Meaning | None]] = {
    "ENABLE": parse_bool,
    "PROTOCOL": lambda v, _: v if v in {"http", "tcp"} else None,
    "BACKEND.BALANCE": lambda v, _: (
        v if v in BALANCE_SIMPLE or re.fullmatch(BALANCE_ARG, v) else None
    ),
    "BACKEND.MAXCONN": lambda v, _: (
        int(v) if INT_VALUE.fullmatch(v) and int(v) <= 1_000_000 else None
    ),
    "FRONTEND.PORT": lambda v, _: int(v) if INT_VALUE.fullmatch(v) and int(v) <= 65535 else None,
    "FRONTEND.HOSTS": parse_hosts,
    "FRONTEND.PATH": parse_path,
    "BACKEND.STRIP_PATH": parse_bool,
    "BACKEND.STICKY": parse_bool,
    "BACKEND.HEALTHCHECK.PATH": parse_health,
    # README: "<name>"; whitespace and control characters are in no name.
    "GROUP": lambda v, _: v if GROUP_NAME.fullmatch(v) else None,
    "FRONTEND.ALLOW": parse_networks,
    # README: true or false; a max-age in seconds, 0 to ten years.
    "FRONTEND.REDIRECT_HTTPS": parse_bool,
    "FRONTEND.HSTS": lambda v, _: (
        int(v) if re.fullmatch(r"[0-9]{1,9}", v) and int(v) <= 315360000 else None
    ),
    "BACKEND.TLS": parse_bool,
    "FRONTEND.ACME": parse_bool,
}
LIST_KEYS = ("FRONTEND.HOSTS", "FRONTEND.ALLOW")


class Shape(NamedTuple):
    """What is one per backend."""

    protocol: str = "http"
    balance: str = "roundrobin"
    port: int | None = None
    redirect: bool = False  # redirect to https
    hsts: int | None = None  # HSTS max-age
    tls: bool = False  # TLS to the instances
    acme: bool = False  # a certificate from HAPROXY_ACME_DIRECTORY for its hosts
    hosts: frozenset[str] = frozenset()  # asked: the aliases; entitled: every host kept
    path: str | None = None
    strip: bool = False
    sticky: bool = False
    health: str | None = None  # the HTTP check's path
    allow: frozenset[Network] = frozenset()


@dataclass(frozen=True)
class Reading:
    """What one instance's ``HAPROXY.*`` tags say, per the README's table."""

    malformed: bool
    enabled: bool  # well-formed and HAPROXY.ENABLE=true (whatever its group)
    asks: bool  # carries HAPROXY.ENABLE=true (and no other ENABLE value), malformed or not
    group: str | None = "external"  # None: its group tags are malformed
    shape: Shape = field(default_factory=Shape)
    maxconn: int | None = None

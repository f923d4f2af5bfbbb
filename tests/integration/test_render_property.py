"""Hostile catalogs through the model and the renderer, every result checked with the
HAProxy of the project's image.

Tags are read per instance (README, "Service tags"), so each generated instance carries
its own: instances of one service that disagree on protocol, balance or frontend port
(a rolling deploy), instances without ``HAPROXY.ENABLE=true``, each instance with its own
``HAPROXY.BACKEND.MAXCONN`` or none, the TLS tags (``HAPROXY.FRONTEND.REDIRECT_HTTPS``,
``HAPROXY.FRONTEND.HSTS``, ``HAPROXY.BACKEND.TLS``, ``HAPROXY.FRONTEND.ACME``), the routing tags
(``HAPROXY.FRONTEND.HOSTS`` with wildcards and aliases other services want too,
``HAPROXY.FRONTEND.PATH``, ``HAPROXY.BACKEND.STRIP_PATH``, ``HAPROXY.BACKEND.STICKY``,
``HAPROXY.BACKEND.HEALTHCHECK.PATH``, ``HAPROXY.FRONTEND.ALLOW``, ``HAPROXY.GROUP``),
Consul's ``Weights`` (0, 1, up to thousands), instances that pass, warn or fail their
checks, each registered at its own Consul ``CreateIndex``; each example runs under one of
a few environments (``HAPROXY_GROUPS``, ``HAPROXY_HEALTH_WARNING``,
``HAPROXY_STICKY_KEY``), and some also say which tcp ports and routes the running load
balancer holds. Next to clean services, hostile ones: names that are not DNS labels, tag
values with whitespace, newlines, ``#``, quotes, backslashes, control and non-ASCII
characters or thousands of characters, unknown ``HAPROXY.*`` tags, duplicate and
conflicting tags, ports out of range, and instances with hostile addresses, IDs and
nodes. One example in four renders as with a certificate served (the https frontend
bound, the redirect rendered). Three things are checked for every example:

1. entitlement, against an oracle written here from the README's contract rather than
   from runtime/consul_lb/model/ (it imports data types only): which services are
   published, skipped or ignored, the shape of each backend (from the most recently
   registered published instance, or while none is published the most recently
   registered one), the tcp ports (held ports stay with their holder, then the earliest
   registered service wins), the routes (a service's own host is its own, then held
   routes stay with their holder, then the earliest registered service wins), and exactly
   which instances become servers (their group published here, their status passing or
   warning as HAPROXY_HEALTH_WARNING says), each with its own maxconn and its Consul
   weight scaled as the README says;
2. the rendered text says what the model says and nothing else: every section and line
   is one of the templates' shapes with the model's values (the lines of allow lists,
   HTTP checks, sticky cookies and stripped paths only where the backend has the option),
   the fixed sections are byte-identical to those of an empty catalog, the renderer's
   per-backend cache changes nothing (a fresh renderer gives the same bytes), the four
   routing maps hold exactly the published routes (hosts in both forms, wildcard
   suffixes and paths longest first), requests looked up through the maps as HAProxy
   does reach the backend the README's routing rules name, and no hostile string (all of
   them carry the marker ``EVIL!``, which no valid value can contain) appears in any
   file;
3. ``haproxy -c`` of the image accepts the files (each distinct rendering once, run in
   parallel in one long-lived container while hypothesis generates the next examples,
   and collected at the end).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

import jinja2
import pytest
from consul_lb import model
from consul_lb.consul.catalog import CRITICAL, PASSING, WARNING, Catalog, Instance
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import Limits, fit
from consul_lb.model.claims import Holders
from consul_lb.render import BACKEND_TEMPLATE, HAPROXY_TEMPLATE, HaproxyFiles, Renderer
from consul_lb.settings import Settings, from_env
from consul_lb.tls.certs import TlsView
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools import images
from devtools.certs import Ca
from devtools.haproxy_check import CheckResult, HaproxyChecker
from tests.integration.conftest import image_names, require_images

EXAMPLES = 1000
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


# ---------------------------------------------------------------- strategies

# Strategies draw whole strings from alphabets (one draw each) rather than with
# from_regex (one draw per character): generation, not haproxy -c, was the slow part.
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
ALNUM = LOWER + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# DNS labels: no '-' at either end.
LABEL = st.text(LOWER + "-", min_size=1, max_size=12).map(lambda s: s.strip("-") or "x")
# Names several services may carry, so that aliases meet other services' own hosts.
SHARED_NAMES = ("a", "b", "web", "api")
SERVICE_LABEL = st.one_of(st.sampled_from(SHARED_NAMES), LABEL)
INJECTIONS = (
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\x00",
    "\x0b",
    "\x85",
    "\u2028",
    "\u202e",
    "#",
    " # comment",
    '"',
    "'",
    "\\",
    "\\n",
    "é",
    "Ω",
    "\U0001f600",
    ";",
    "{",
    "}",
    "%[",
    "${X}",
    "\n    server injected 6.6.6.6:80 check",
    "\nbackend injected\n    mode tcp",
    "\nglobal\n    maxconn 1",
)
# ';' and "'" may be in a URI path (RFC 3986 sub-delims): not enough to spoil a path.
PATH_INJECTIONS = tuple(i for i in INJECTIONS if i not in (";", "'"))
# Group names are not defined beyond "names": only whitespace and control characters
# make one surely invalid.
GROUP_INJECTIONS = tuple(i for i in INJECTIONS if i.isspace() or not i.isprintable())


@st.composite
def hostile(
    draw: st.DrawFn, base: st.SearchStrategy[str], injections: Sequence[str] = INJECTIONS
) -> str:
    """``base`` with an injection, the marker and a tail (short or very long) inserted."""
    text = draw(base)
    pos = draw(st.integers(0, len(text)))
    injection = draw(st.sampled_from(injections))
    tail = draw(st.one_of(st.text(max_size=8), st.sampled_from([100, 300, 5000]).map("A".__mul__)))
    return text[:pos] + injection + MARK + tail + text[pos:]


# Names that are not DNS labels but carry no marker: skipped, and never a backend.
BAD_NAMES = st.one_of(
    st.tuples(LABEL, st.text("ABCXYZ", min_size=1, max_size=2)).map("".join),
    st.tuples(LABEL, st.sampled_from(["_", ".", ":"]), LABEL).map("".join),
    LABEL.map(lambda s: f"-{s}"),
    LABEL.map(lambda s: f"{s}-"),
    st.just("a" * 64),
    st.just(""),
)


@st.composite
def names(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    strategy: st.SearchStrategy[str] = (
        SERVICE_LABEL if kind < 5 else BAD_NAMES if kind < 8 else hostile(LABEL)
    )
    return draw(strategy)


# Written again from the README's tag table on purpose: the oracle must not import what
# it checks (runtime/consul_lb/model/tags.py), or a wrong list there would pass unnoticed.
BALANCE_SIMPLE = (
    "first",
    "leastconn",
    "random",
    "rdp-cookie",
    "roundrobin",
    "source",
    "static-rr",
    "uri",
)
BALANCE_ARG = r"(hdr|rdp-cookie)\([A-Za-z0-9_-]{1,64}\)|url_param [A-Za-z0-9_-]{1,64}"
# Hosts several services ask for: other services' own hosts, shared aliases, wildcards
# that contain each other.
HOST_POOL = (
    *(f"{n}.{DOMAIN}" for n in SHARED_NAMES),
    "www.example.org",
    "shop.example.org",
    f"x.y.{DOMAIN}",
    f"*.{DOMAIN}",
    "*.example.org",
    f"*.y.{DOMAIN}",
    "*.shop.example.org",
)
LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
HOST_NAME = st.lists(LABEL, min_size=2, max_size=4).map(".".join)


def rarely(rare: st.SearchStrategy[str], usual: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``rare`` one time in sixteen, else ``usual``."""
    return st.integers(0, 15).flatmap(lambda n: rare if n == 0 else usual)


ONE_HOST = st.one_of(
    st.sampled_from(HOST_POOL),
    st.sampled_from(HOST_POOL),
    HOST_NAME,
    HOST_NAME.map("*.".__add__),
    st.just(LONG_HOST),
)
MANY_HOSTS = ",".join(f"h{n}.example.net" for n in range(32))  # the most a tag may list
SEGMENT = st.text(ALNUM + "._~-", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
SEGMENTS = st.lists(SEGMENT, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))
NETWORK = st.one_of(
    st.sampled_from(
        ["0.0.0.0/0", "::/0", "10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", "127.0.0.1/32"]
    ),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(
        lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))
    ),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(
        lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))
    ),
)
MANY_NETWORKS = ",".join(f"10.{n}.0.0/16" for n in range(32))
GOOD_VALUES: dict[str, st.SearchStrategy[str]] = {
    "ENABLE": st.sampled_from(["true", "true", "true", "false", "True", "TRUE"]),
    "PROTOCOL": st.sampled_from(["http", "tcp"]),
    "BACKEND.BALANCE": st.one_of(
        st.sampled_from(BALANCE_SIMPLE),
        st.sampled_from(["hdr(host)", "hdr(X-Real-IP)", "rdp-cookie(mstshash)", "url_param uid"]),
        st.tuples(
            st.sampled_from(["hdr({})", "rdp-cookie({})", "url_param {}"]),
            st.text(ALNUM + "_-", min_size=1, max_size=64),
        ).map(lambda t: t[0].format(t[1])),
    ),
    "BACKEND.MAXCONN": st.one_of(st.sampled_from([1, 1_000_000]), st.integers(1, 1_000_000)).map(
        str
    ),
    "FRONTEND.PORT": st.one_of(
        st.sampled_from([1, 80, 4444, 8080, 9000, 9001, 65535]), st.integers(1, 65535)
    ).map(str),
    "FRONTEND.HOSTS": rarely(
        st.just(MANY_HOSTS), st.lists(ONE_HOST, min_size=1, max_size=3).map(",".join)
    ),
    "FRONTEND.PATH": st.one_of(
        st.sampled_from(
            ["/api", "/api/v1", "/shop", "/v1.2", "/.well-known", "/a-b_c~d", "/API", "/cart"]
        ),
        SEGMENTS,
    ),
    "BACKEND.STRIP_PATH": st.sampled_from(["true", "true", "false", "True"]),
    "BACKEND.STICKY": st.sampled_from(["true", "true", "false", "TRUE"]),
    "BACKEND.HEALTHCHECK.PATH": st.one_of(
        st.sampled_from(["/health", "/_health", "/status/ready", "/v1.0/ping"]), SEGMENTS
    ),
    "GROUP": st.sampled_from(["external", "internal", "internal", "edge", "other_1"]),
    "FRONTEND.ALLOW": rarely(
        st.just(MANY_NETWORKS), st.lists(NETWORK, min_size=1, max_size=4).map(",".join)
    ),
    "FRONTEND.REDIRECT_HTTPS": st.sampled_from(["true", "true", "false", "True"]),
    "FRONTEND.HSTS": st.one_of(
        st.sampled_from([0, 1, 31536000, 63072000, 315360000]), st.integers(0, 315360000)
    ).map(str),
    "BACKEND.TLS": st.sampled_from(["true", "true", "false", "TRUE"]),
    "FRONTEND.ACME": st.sampled_from(["true", "true", "false", "True"]),
}
HOSTILE_INJECTIONS = {
    "FRONTEND.PATH": PATH_INJECTIONS,
    "BACKEND.HEALTHCHECK.PATH": PATH_INJECTIONS,
    "GROUP": GROUP_INJECTIONS,
}
INVALID_PATHS = (
    "",
    "api",
    "a/b",
    "/a b",
    "/a#f",
    '/a"b',
    "/a\\b",
    "/a{b}",
    "/a|b",
    "/a^b",
    "/a`b",
    "/a<b>",
    "/a\x7f",
    "/é",
)
# Values a careless parser might take; none carries the marker.
INVALID_VALUES: dict[str, tuple[str, ...]] = {
    "ENABLE": ("", "yes", "1", "on", "true ", " true", "truefalse"),
    "PROTOCOL": ("", "HTTP", "udp", "https", "http2", "tcp "),
    "BACKEND.BALANCE": (
        "",
        "RoundRobin",
        "hash",
        "hdr()",
        "hdr(a b)",
        "url_param",
        "url_param a b",
        "roundrobin ",
        "leastconn;",
        "hdr(host",
        "uri whole",
    ),
    "BACKEND.MAXCONN": ("", "0", "-1", "1000001", "1e3", "10000000", "12345678", "0x10", " 5"),
    "FRONTEND.PORT": ("", "0", "-1", "65536", "99999", "80.0", "8080 ", "1234567"),
    "FRONTEND.HOSTS": (
        "",
        ",",
        " ",
        "*",
        "*.",
        ".",
        f"a..b.{DOMAIN}",
        "-a.example.org",
        "a-.example.org",
        "a.example.org/x",
        "a.example.org:80",
        "http://a.example.org",
        "a_b.example.org",
        "*.*.example.org",
        "a.*.example.org",
        "*a.example.org",
        "**.example.org",
        "a" * 64 + ".example.org",
        LONG_HOST + "e",  # 254 characters
        "\u212a.example.org",  # the Kelvin sign: lower-cased by Python, it is a 'k'
        "a.example.org;b.example.org",
        "a.example.org b.example.org",
        MANY_HOSTS + ",h32.example.net",  # 33
    ),
    "FRONTEND.PATH": INVALID_PATHS,
    "BACKEND.STRIP_PATH": ("", "yes", "1", "on", " true"),
    "BACKEND.STICKY": ("", "yes", "1", "on", "true "),
    "BACKEND.HEALTHCHECK.PATH": INVALID_PATHS,
    "GROUP": ("", "a b", " internal", "internal ", "in\tternal"),
    "FRONTEND.ALLOW": (
        "",
        "10.0.0.0/33",
        "256.0.0.0/8",
        "10.0.0.0/8/8",
        "::/129",
        "any",
        "all",
        "*",
        "10.0.0.0-10.0.0.255",
        "fe80::/10%eth0",
        "fe80::1%eth0",
        "10.0.0.0 /8",
        "10.0.0.0/\uff18",  # a full-width 8
        MANY_NETWORKS + ",10.32.0.0/16",  # 33
    ),
    "FRONTEND.REDIRECT_HTTPS": ("", "yes", "1", "https", "true "),
    "FRONTEND.HSTS": ("", "-1", "315360001", "1y", "31536000; preload", "1e6", "0x10"),
    "BACKEND.TLS": ("", "ssl", "on", "verify", " true"),
    "FRONTEND.ACME": ("", "yes", "1", "letsencrypt", "true "),
}
# Values the README leaves open (see Interpretation): upper-case hosts, spaces around and
# empty items in lists, one-label hosts, single addresses and networks with host bits, a
# trailing slash on a path prefix, a health check of "/".
ARGUABLE_VALUES: dict[str, tuple[str, ...]] = {
    "FRONTEND.HOSTS": (
        "WWW.Example.ORG",
        f"A.{DOMAIN.upper()}",
        "*.EXAMPLE.org",
        f"a.{DOMAIN}, shop.example.org",
        " www.example.org",
        "shop.example.org,",
        f"a.{DOMAIN},,b.{DOMAIN}",
        ",www.example.org",
        "localhost",
        "*.com",
        "intranet,www.example.org",
        "Shop.Example.Org, WWW.example.org",
    ),
    "FRONTEND.ALLOW": (
        "10.1.2.3",
        "::1",
        "10.0.0.1/8",
        "2001:db8::1/32",
        "10.0.0.0/8, 192.168.0.0/16",
        "10.0.0.0/8,",
        "10.0.0.0/8,,::/0",
        "10.1.2.3, 10.0.0.1/8",
    ),
    "FRONTEND.PATH": ("/api/", "/shop/v2/"),
    "BACKEND.HEALTHCHECK.PATH": ("/",),
}
UNKNOWN_KEYS = (
    "ENABLED",
    "enable",
    "BACKEND",
    "BACKEND.TIMEOUT",
    "BACKEND.BALANCE.EXTRA",
    "FRONTEND.BIND",
    "GLOBAL.MAXCONN",
    "",
    "PROTOCOL ",
    "FRONTEND.HOST",
    "FRONTEND.PATHS",
    "BACKEND.HEALTHCHECK",
    "BACKEND.STICKY.KEY",
    "GROUPS",
)


@st.composite
def bad_tag(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(sorted(GOOD_VALUES)))
    injections = HOSTILE_INJECTIONS.get(key, INJECTIONS)
    return draw(
        st.one_of(
            hostile(GOOD_VALUES[key], injections).map(lambda v: f"HAPROXY.{key}={v}"),
            st.sampled_from(INVALID_VALUES[key]).map(lambda v: f"HAPROXY.{key}={v}"),
            st.sampled_from(UNKNOWN_KEYS).map(lambda k: f"HAPROXY.{k}=true"),
            st.just(f"HAPROXY.{key}"),  # no '=value'
            hostile(st.just(key)).map(lambda k: f"HAPROXY.{k}=true"),
        )
    )


def good_tag(key: str) -> st.SearchStrategy[str]:
    return GOOD_VALUES[key].map(lambda v: f"HAPROXY.{key}={v}")


def arguable_tag() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [f"HAPROXY.{k}={v}" for k, values in sorted(ARGUABLE_VALUES.items()) for v in values]
    )


FOREIGN_TAGS = st.one_of(
    st.sampled_from(
        [
            "traefik.enable=true",
            "haproxy.enable=true",  # the prefix is case-sensitive: not ours
            "HAPROXY",
            "HAPROXY_ENABLE=true",
            "urlprefix-/",
            "v1",
        ]
    ),
    hostile(st.text(max_size=10)).filter(lambda t: not t.startswith("HAPROXY.")),
)
# Tags that read HTTP (README: tcp services cannot be routed by Host).
HTTP_TAGS = (
    "FRONTEND.HOSTS",
    "FRONTEND.PATH",
    "BACKEND.STRIP_PATH",
    "BACKEND.STICKY",
    "BACKEND.HEALTHCHECK.PATH",
)


@st.composite
def instance_tags(draw: st.DrawFn, clean: bool = False) -> list[str]:
    """Tags of one instance; ``clean``: enabled and without malformed or conflicting tags
    (which still leaves room for a tcp service without a port, an HTTP-only balance in
    tcp mode, a taken tcp port or a group this load balancer does not publish)."""
    tags: list[str] = []
    if clean:
        tags.append(ENABLE)
    elif draw(st.integers(0, 9)) < 8:
        tags.append(draw(good_tag("ENABLE")))
    tcp = draw(st.booleans())
    if tcp:
        tags.append("HAPROXY.PROTOCOL=tcp")
        if draw(st.integers(0, 4)) > 0:
            tags.append(draw(good_tag("FRONTEND.PORT")))
    elif draw(st.booleans()):
        tags.append("HAPROXY.PROTOCOL=http")
    for key in ("BACKEND.BALANCE", "BACKEND.MAXCONN"):
        if draw(st.booleans()):
            tags.append(draw(good_tag(key)))
    for key in (
        "FRONTEND.REDIRECT_HTTPS",
        "FRONTEND.HSTS",
        "BACKEND.TLS",
        "FRONTEND.ACME",
        "FRONTEND.ALLOW",
        "GROUP",
        "BACKEND.STICKY",
        "BACKEND.HEALTHCHECK.PATH",
    ):
        if clean and tcp and key in HTTP_TAGS:
            continue
        if draw(st.integers(0, 3)) == 0:
            tags.append(draw(good_tag(key)))
    if not (clean and tcp):
        if draw(st.integers(0, 2)) == 0:
            tags.append(draw(good_tag("FRONTEND.HOSTS")))
        path = draw(st.integers(0, 2)) == 0
        if path:
            tags.append(draw(good_tag("FRONTEND.PATH")))
        if (path or not clean) and draw(st.integers(0, 2)) == 0:
            tags.append(draw(good_tag("BACKEND.STRIP_PATH")))
    tags += draw(st.lists(FOREIGN_TAGS, max_size=2))
    if not clean and draw(st.booleans()):
        tags += draw(st.lists(bad_tag(), min_size=1, max_size=2))
    if not clean and draw(st.integers(0, 3)) == 0:  # a second value for a key: a conflict
        tags.append(draw(good_tag(draw(st.sampled_from(sorted(GOOD_VALUES))))))
    if not clean and draw(st.integers(0, 2)) == 0:
        tags.append(draw(arguable_tag()))
    if len(tags) > 0 and draw(st.booleans()):  # an exact duplicate: harmless
        tags.append(draw(st.sampled_from(tags)))
    return tags


GOOD_ADDRESSES = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), HOST_NAME)
# Addresses a reader could argue about; the model may take or leave them, but what it
# takes must pass haproxy -c.
EDGE_ADDRESSES = st.one_of(
    st.text("0123456789.", min_size=1, max_size=17),
    st.tuples(st.sampled_from(ALNUM), st.text(ALNUM + ".-", max_size=40)).map("".join),
    st.sampled_from(["0.0.0.0", "::", "::1", "localhost", "a" * 63 + "." + "b" * 63, "x" * 253]),
)
BAD_ADDRESSES = st.one_of(
    hostile(st.one_of(st.ip_addresses().map(str), HOST_NAME)),
    st.sampled_from(
        [
            "",
            " ",
            "fe80::1%eth0",
            "fe80::1%eth0\n    server x 1.2.3.4:80",
            "10.0.0.1:80",
            "[::1]",
            "10.0.0.1/24",
            "10.0.0.1 backup",
            "ipv4@10.0.0.1",
            "unix@/tmp/x",
            "-foo",
            "foo.",
            "a" * 254,
        ]
    ),
)
PORTS = st.one_of(
    st.integers(1, 65535), st.sampled_from([-1, 0, 1, 65535, 65536, 70000, 2**31, -(2**31)])
)
SERVICE_IDS = st.one_of(
    LABEL,
    st.sampled_from(["a", "b"]),  # the same ID twice in one service
    st.text(ALNUM + "_.:-", min_size=1, max_size=70),
    hostile(LABEL),
)
NODES = st.one_of(LABEL, st.sampled_from(["n1", "n2"]), hostile(LABEL))
ADDRESSES = st.one_of(GOOD_ADDRESSES, GOOD_ADDRESSES, EDGE_ADDRESSES, BAD_ADDRESSES)
STATUSES = st.sampled_from([PASSING, PASSING, PASSING, WARNING, CRITICAL])
# Consul's Weights: mostly Consul's default 1, else 0 (Warning may be 0) up to HAProxy's
# top 256 (used as they are), and now and then above it (scaled into 1..256).
WEIGHTS = st.integers(0, 9).flatmap(
    lambda n: (
        st.just(1)
        if n < 5
        else st.sampled_from([0, 1, 2, 3, 10, 100, 255, 256])
        if n < 8
        else st.one_of(st.sampled_from([257, 1000, 65535]), st.integers(257, 100_000))
    )
)


@st.composite
def instances(draw: st.DrawFn, tags: list[str], status: str | None = None) -> Instance:
    """One instance with ``tags``, as Instance.from_health_entry builds it (its tags a
    sorted set); its CreateIndex is set once the whole catalog is drawn."""
    return Instance(
        node=draw(NODES),
        service_id=draw(SERVICE_IDS),
        address=draw(ADDRESSES),
        port=draw(PORTS),
        tags=tuple(sorted(set(tags))),
        status=status or draw(STATUSES),
        weight_passing=draw(WEIGHTS),
        weight_warning=draw(WEIGHTS),
    )


@st.composite
def service_instances(draw: st.DrawFn, clean: bool) -> list[Instance]:
    """A service's instances: most share one registration's tags, others carry another
    version's (valid or not) or none of ours. A clean service's first instance is clean
    and passing, so that most examples publish something and haproxy -c sees backends."""
    base = draw(instance_tags(clean))
    found: list[Instance] = []
    for i in range(draw(st.integers(1 if clean else 0, 4))):
        if clean and i == 0:
            found.append(draw(instances(base, PASSING)))
            continue
        kind = draw(st.integers(0, 9))
        tags = (
            base
            if kind < 5
            else draw(instance_tags(clean=kind == 5))
            if kind < 9
            else draw(st.lists(FOREIGN_TAGS, max_size=2))
        )
        found.append(draw(instances(tags)))
    return found


PORT_TAG = re.compile(r"HAPROXY\.FRONTEND\.PORT=([1-9][0-9]{0,4})", re.ASCII)


def asked_routes(name: str, found: Sequence[Instance]) -> set[Route]:
    """Routes a service's instances may ask for (roughly: to draw held routes from)."""
    routes: set[Route] = set()
    for i in found:
        values = tag_values(i.tags)
        paths = [p for p in values.get("FRONTEND.PATH", []) if re.fullmatch(r"(/[\w.~-]+)+", p)]
        hosts = {f"{name}.{DOMAIN}"} | {
            h.strip(" ").lower() for v in values.get("FRONTEND.HOSTS", []) for h in v.split(",")
        }
        routes |= {(h, p) for h in hosts if h and MARK not in h for p in [None, *paths[:1]]}
    return routes


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """One to three clean services next to zero to three of any kind; every instance
    registered at its own CreateIndex; sometimes tcp ports and routes held by the running
    load balancer (ports by services that could have held them: DNS labels, one port
    each; routes by any service of the catalog)."""
    env = draw(st.integers(0, len(ENVS) - 1))
    services: dict[str, list[Instance]] = {}
    for clean in [True] * draw(st.integers(1, 3)) + [False] * draw(st.integers(0, 3)):
        name = draw(SERVICE_LABEL if clean else names())
        found = draw(service_instances(clean))
        services.setdefault(name, found)
    total = sum(map(len, services.values()))
    order = iter(draw(st.permutations(range(total))))
    services = {
        name: [dataclasses.replace(i, create_index=100 + 7 * next(order)) for i in found]
        for name, found in services.items()
    }
    held: dict[int, str] = {}
    for name, found in services.items():
        if not DNS_LABEL.fullmatch(name) or draw(st.integers(0, 2)) > 0:
            continue
        asked = sorted({int(m[1]) for i in found for t in i.tags if (m := PORT_TAG.fullmatch(t))})
        ports = [p for p in [*asked, 9000, 9001] if p <= 65535]
        port = draw(st.sampled_from(ports))
        if port not in held and port not in (SETTINGS.http_port, SETTINGS.stats_port):
            held[port] = name
    labels = sorted(n for n in services if DNS_LABEL.fullmatch(n))
    routes: dict[Route, str] = {}
    candidates = sorted(
        {r for n in labels for r in asked_routes(n, services[n])}, key=lambda r: (r[0], r[1] or "")
    )
    if labels and candidates and draw(st.integers(0, 2)) == 0:
        for route in draw(st.lists(st.sampled_from(candidates), max_size=3, unique=True)):
            routes[route] = draw(st.sampled_from(labels))
    return Scenario(services, held, routes, env)


def to_catalog(scenario: Scenario) -> Catalog:
    """As the watcher builds it: a service's tags are the union of its instances'."""
    return Catalog.build(
        {name: {t for i in found for t in i.tags} for name, found in scenario.services.items()},
        scenario.services,
    )


# ---------------------------------------------------------------- the oracle

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
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


def tag_values(tags: Sequence[str]) -> dict[str, list[str]]:
    """``HAPROXY.<key>=<value>`` tags without the marker: key -> values."""
    values: dict[str, list[str]] = {}
    for t in tags:
        key, sep, value = t.removeprefix("HAPROXY.").partition("=")
        if t.startswith("HAPROXY.") and sep and MARK not in t:
            values.setdefault(key, []).append(value)
    return values


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


# ---------------------------------------------------------------- the rendered text


def parse_sections(config: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(lines before the first section, [(section header, body lines)])."""
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in config.split("\n"):
        if line and not line[0].isspace() and not line.startswith("#"):
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    for _, body in sections:
        while body and not body[-1]:
            body.pop()
    return preamble, sections


@dataclass(frozen=True)
class Expected:
    """A dynamic section: lines that carry the model's values (each exactly once), the
    server lines (in the model's order, each one of the spellings its server allows),
    lines it may hold, lines that must not be there, and the path prefix a
    ``replace-path`` line must strip (None: no such line)."""

    header: str
    values: list[str]
    servers: list[frozenset[str]] = field(default_factory=list)
    optional: frozenset[str] = frozenset()
    forbidden: tuple[str, ...] = ()
    strip: str | None = None


def server_lines(s: model.Server, checks: bool, tls: bool) -> frozenset[str]:
    """The spellings of a server line: its options in any order; weight 1 (HAProxy's
    default) written or not."""
    address = f"ipv6@{s.address}" if ":" in s.address else s.address
    options = ["check"] if checks else []
    options += [f"maxconn {s.maxconn}"] if s.maxconn is not None else []
    # README: TLS to the instances, not verified without HAPROXY_BACKEND_CA_FILE.
    options += ["ssl verify none"] if tls else []
    weights = [[f"weight {s.weight}"]] if s.weight != 1 else [[], ["weight 1"]]
    return frozenset(
        f"    server {s.name} {address}:{s.port}" + "".join(f" {o}" for o in order)
        for w in weights
        for order in itertools.permutations(options + w)
    )


HTTP_CHECK = ("    option httpchk", "    http-check expect rstatus ^[23]")
TCP_CHECK = "    option tcp-check"


def expected_dynamic_sections(
    lb: model.LoadBalancer, limits: Limits, sticky_key: str, serving: bool = False
) -> list[Expected]:
    """The model's frontends and backends as the templates' value-carrying lines;
    ``serving``: a certificate is served (the https frontend is bound)."""
    out: list[Expected] = []
    for b in lb.tcp_backends:
        out.append(
            Expected(
                f"frontend tcp_{b.frontend_port}",
                [f"    bind :{b.frontend_port}", "    mode tcp", f"    default_backend {b.name}"],
            )
        )
    for b in lb.backends:
        http = b.protocol == "http"
        lines = [f"mode {b.protocol}", f"balance {b.balance}"]
        # README: clients outside the networks get 403 (tcp: the connection is closed).
        if b.allow:
            src = f"{{ src {' '.join(b.allow)} }}"
            lines.append(
                f"http-request deny deny_status 403 unless {src}"
                if http
                else f"tcp-request content reject unless {src}"
            )
        http_only = [
            "option forwardfor",
            "http-request set-header X-Forwarded-Port %[dst_port]",
        ]
        lines += http_only[:1] if http else []
        # README: HAProxy checks with GET <path> (2xx or 3xx) instead of a TCP connect.
        if b.healthcheck_path:
            lines += [
                "option httpchk",
                f"http-check send meth GET uri {b.healthcheck_path} ver HTTP/1.1 hdr Host {b.name}",
                "http-check expect rstatus ^[23]",
            ]
        else:
            lines.append("option tcp-check")
        lines.append("default-server inter 10s fall 1 init-addr last,libc,none")
        # README: a cookie consul-lb-<service>, HAProxy's dynamic cookies keyed with
        # HAPROXY_STICKY_KEY.
        if b.sticky:
            lines += [
                f"cookie consul-lb-{b.service} insert indirect nocache dynamic",
                f"dynamic-cookie-key {sticky_key}",
            ]
        lines += http_only[1:] if http else []
        # README: a 308 to https, same host and path, the port named unless 443 (only
        # while a certificate is served); HSTS on https responses.
        if http and b.redirect_https and serving:
            lines.append(
                "http-request redirect code 308 location "
                "https://%[req.hdr(host),field(1,:)]:8443%[pathq] unless { ssl_fc }"
            )
        if http and b.hsts is not None:
            lines.append(
                "http-response set-header Strict-Transport-Security "
                f'"max-age={b.hsts}" if {{ ssl_fc }}'
            )
        strip = b.path if b.strip_path else None
        forbidden = () if http else tuple(f"    {f}" for f in http_only)
        forbidden += (TCP_CHECK,) if b.healthcheck_path else HTTP_CHECK
        out.append(
            Expected(
                f"backend {b.name}",
                [f"    {v}" for v in lines],
                [server_lines(s, limits.checks, b.tls) for s in b.servers],
                frozenset(
                    {
                        "    # HAPROXY.BACKEND.STRIP_PATH: the instances see the path without "
                        f"{strip}."
                    }
                    if strip
                    else ()
                ),
                forbidden,
                strip,
            )
        )
    return out


REPLACE_PATH = re.compile(r"    http-request replace-path \^(.+)/\?\(\.\*\) /\\1")


def strips(line: str, prefix: str) -> bool:
    """Whether a ``replace-path`` line removes exactly ``prefix`` (README: ``/api/users``
    arrives as ``/users``): its expression is the prefix, each character literal ('.'
    escaped, any other punctuation escaped or not)."""
    found = REPLACE_PATH.fullmatch(line)
    if not found:
        return False
    tokens = re.findall(r"\\[^A-Za-z0-9]|[A-Za-z0-9_~/-]", found[1])
    return "".join(tokens) == found[1] and "".join(t[-1] for t in tokens) == prefix


def template_literals(env: jinja2.Environment) -> dict[str, set[str]]:
    """Lines of the templates that render tcp frontends (the loop in haproxy.cfg.j2) and
    backends (backend.cfg.j2) and that hold no Jinja2 at all: static directives and
    comments, the same for every input. Read from the templates in use, so that a new
    static directive there (another engineer's ``option tcplog``) does not break this
    test, while anything that depends on the input still has to be one of the value
    lines above (and option-specific static lines are forbidden where the option is
    not, see HTTP_CHECK)."""
    assert env.loader is not None

    def source(name: str) -> list[str]:
        text = env.loader.get_source(env, name)[0] if env.loader else ""
        return re.sub(r"\{#.*?#\}", "", text, flags=re.DOTALL).split("\n")

    def literals(lines: Sequence[str]) -> set[str]:
        return {ln for ln in lines if "{{" not in ln and "{%" not in ln}

    lines = source(HAPROXY_TEMPLATE)
    begin = lines.index("{% for b in lb.tcp_backends %}")
    end = lines.index("{% endfor %}", begin)
    return {
        "frontend": literals(lines[begin + 1 : end]),
        "backend": literals(source(BACKEND_TEMPLATE)),
    }


def check_dynamic_sections(
    sections: list[tuple[str, list[str]]],
    lb: model.LoadBalancer,
    limits: Limits,
    literals: Mapping[str, set[str]],
    sticky_key: str,
    serving: bool = False,
) -> None:
    expected = expected_dynamic_sections(lb, limits, sticky_key, serving)
    assert [h for h, _ in sections] == [e.header for e in expected], "sections differ from model"
    for (header, body), want in zip(sections, expected, strict=True):
        static = literals[header.split()[0]]
        servers = [ln for ln in body if ln.startswith("    server ")]
        stripping = [ln for ln in body if ln.startswith("    http-request replace-path ")]
        rest = [ln for ln in body if ln not in servers and ln not in stripping]
        values = Counter(want.values)
        extra = [ln for ln in rest if ln not in values and ln not in static | want.optional]
        assert not extra, f"{header}: lines the input was not entitled to: {extra}"
        assert Counter(ln for ln in rest if ln in values) == values, f"{header}: {body}"
        assert len(servers) == len(want.servers), f"{header}: {servers}"
        for line, spellings in zip(servers, want.servers, strict=True):
            assert line in spellings, f"{header}: {line!r}, expected one of {sorted(spellings)}"
        assert len(stripping) == (want.strip is not None), f"{header}: {stripping}"
        assert all(strips(ln, want.strip or "") for ln in stripping), f"{header}: {stripping}"
        assert not set(body) & set(want.forbidden), f"{header}: lines of options it has not"


def printable_ascii(text: str) -> bool:
    return re.fullmatch(r"[ -~\n]*", text) is not None


def hostile_strings(scenario: Scenario) -> Iterator[str]:
    for name, found in scenario.services.items():
        yield from [name] if MARK in name else []
        for i in found:
            yield from (t for t in (i.node, i.service_id, i.address, *i.tags) if MARK in t)


ROUTING_MAPS = ("hosts.map", "wildcards.map", "paths.map", "sites.map")
# README (Environment): HAPROXY_STICKY_KEY, 8..128 characters; one word in haproxy.cfg.
KEY = re.compile(r"[!$-&(-\[\]-~]{8,128}")


def map_entries(text: str) -> list[tuple[str, str]]:
    assert text == "" or text.endswith("\n"), text[-80:]
    entries = [cast(tuple[str, str], tuple(ln.split(" "))) for ln in text.splitlines()]
    assert all(len(e) == 2 and all(e) for e in entries), text[:400]
    return entries


def check_maps(lb: model.LoadBalancer, maps: Mapping[str, str]) -> int:
    """The routing maps hold the published routes and nothing else (maps.py: hosts in
    both forms; wildcards as suffixes and paths as ``<site><path>/``, longest key first),
    and requests looked up through them as the http frontend does reach the backend the
    README's rules name. Returns how many requests were looked up."""
    want: dict[str, set[tuple[str, str]]] = {name: set() for name in ROUTING_MAPS}
    for b in lb.http_backends:
        for site in b.hosts:
            if site.startswith("*."):
                want["wildcards.map"] |= {(site[1:], site), (f"{site[1:]}.", site)}
            else:
                want["hosts.map"] |= {(site, site), (f"{site}.", site)}
            if b.path is None:
                want["sites.map"].add((site, b.name))
            else:
                want["paths.map"].add((f"{site}{b.path}/", b.name))
    entries = {name: map_entries(maps[name]) for name in ROUTING_MAPS}
    for name in ROUTING_MAPS:
        keys = [k for k, _ in entries[name]]
        assert len(keys) == len(set(keys)), f"{name}: a key twice\n{maps[name][:2000]}"
        assert set(entries[name]) == want[name], f"{name}: {maps[name][:2000]}"
        if name in ("wildcards.map", "paths.map"):  # matched in file order
            assert [len(k) for k in keys] == sorted(map(len, keys), reverse=True), name
    routes = {(h, b.path): b.name for b in lb.http_backends for h in b.hosts}
    hosts = sorted({h for h, _ in routes})
    paths = {"/", "/x"}
    for p in sorted({p for _, p in routes if p}):
        paths |= {p, f"{p}/", f"{p}/deeper/x", f"{p}x", p.upper(), p.rsplit("/", 1)[0] or "/"}
    headers = {"unknown.invalid", f"nothing.{DOMAIN}"}
    for h in hosts:
        if h.startswith("*."):
            headers |= {f"x{h[1:]}", f"a.b{h[1:]}", f"Z{h[1:]}.".upper(), h[2:]}
        else:
            headers |= {h, f"{h.upper()}.", f"{h}:8080"}
    tables = Tables(
        dict(entries["hosts.map"]),
        entries["wildcards.map"],
        entries["paths.map"],
        dict(entries["sites.map"]),
    )
    looked_up = 0
    for header in sorted(headers):
        for path in sorted(paths):
            got = lookup(tables, header, path)
            acceptable = readme_route(routes, header, path)
            assert got in acceptable, f"Host {header!r} path {path!r}: {got}, not {acceptable}"
            looked_up += 1
    return looked_up


class Tables(NamedTuple):
    """The routing maps: exact ones as dicts, ordered ones as their entries."""

    hosts: dict[str, str]
    wildcards: list[tuple[str, str]]
    paths: list[tuple[str, str]]
    sites: dict[str, str]


def lookup(tables: Tables, header: str, path: str) -> str | None:
    """The http frontend's lookups (templates/haproxy.cfg.j2, maps.py): the Host header
    lower-cased without its :port; ``map`` exact, ``map_end`` and ``map_beg`` the first
    entry in file order that matches."""
    host = header.lower().split(":")[0]
    site = tables.hosts.get(host)
    if site is None:
        site = next((v for k, v in tables.wildcards if host.endswith(k)), None)
    if site is None:
        return None
    key = f"{site}{path}/"
    found = next((v for k, v in tables.paths if key.startswith(k)), None)
    return found if found is not None else tables.sites.get(site)


def readme_route(routes: Mapping[Route, str], header: str, path: str) -> set[str | None]:
    """The backends the README lets a request reach: the Host lower-cased, without its
    :port, its absolute form the same; an exact host wins over a wildcard (any depth),
    the longest wildcard over a shorter one; on that host the longest path prefix (/api
    takes /api and /api/..., not /apix), else the service without a path. Whether a host
    whose routes do not take the path falls back to a wildcard's, the README does not
    say: both readings."""
    host = header.lower().split(":")[0].removesuffix(".")
    sites = {h for h, _ in routes}
    chain = [host] if host in sites and not host.startswith("*.") else []
    chain += sorted(
        (s for s in sites if s.startswith("*.") and host.endswith(s[1:])), key=len, reverse=True
    )

    def on(site: str) -> str | None:
        prefixes = [
            p for s, p in routes if s == site and p and (path == p or path.startswith(f"{p}/"))
        ]
        return routes[site, max(prefixes, key=len)] if prefixes else routes.get((site, None))

    answers = [on(site) for site in chain]
    return {answers[0] if answers else None, next((a for a in answers if a), None)}


def check_output(
    scenario: Scenario,
    lb: model.LoadBalancer,
    limits: Limits,
    files: HaproxyFiles,
    fixed: list[tuple[str, list[str]]],
    literals: Mapping[str, set[str]],
    derived_keys: dict[str, str],
    serving: bool = False,
) -> int:
    """Returns how many requests were looked up through the maps."""
    texts = files.files().values()
    assert all(printable_ascii(text) and MARK not in text for text in texts)
    for hostile_text in hostile_strings(scenario):
        assert not any(hostile_text in t for t in texts), f"hostile {hostile_text!r} in the output"
    preamble, sections = parse_sections(files.config)
    assert preamble == [
        "# haproxy.cfg rendered by consul-lb from the Consul catalog.",
        "# Do not edit: it is rewritten on every catalog change.",
        f"# Published: {len(lb.backends)} service(s); skipped: {len(lb.skipped)}.",
        "",
    ]
    assert sections[: len(fixed)] == fixed, "the fixed sections changed with the catalog"
    # README: HAPROXY_STICKY_KEY, else one derived from HAPROXY_DOM (the same each time).
    env = ENVS[scenario.env]
    keys = set(re.findall(r"^    dynamic-cookie-key (.*)$", files.config, re.MULTILINE))
    if keys and not env.sticky_key:
        derived_keys.setdefault(DOMAIN, min(keys))
    key = env.sticky_key or derived_keys.get(DOMAIN, "")
    assert not keys or KEY.fullmatch(key), f"sticky key {key!r}"
    check_dynamic_sections(sections[len(fixed) :], lb, limits, literals, key, serving)
    assert set(files.maps) == {*ROUTING_MAPS, "health.map"}, sorted(files.maps)
    assert files.health_map == ""  # not waiting for Consul, not draining
    for b in lb.backends:
        assert re.fullmatch(rf"[a-z0-9-]{{1,63}}\.{re.escape(DOMAIN)}", b.name, re.ASCII)
    return check_maps(lb, files.maps)


def check_log_lines(lb: model.LoadBalancer, problems: Sequence[str]) -> None:
    """Skips and left-out instances are logged as one line each (the applier's format):
    hostile names and tags must not break a line or carry control characters."""
    for s in lb.skipped:
        line = f"skipping service {s.service!r}: {s.reason}"
        assert line.isprintable(), line
    for p in problems:
        assert f"leaving out {p}".isprintable(), p


# ---------------------------------------------------------------- the test


# A certificate served: the https frontend's crt-list, in the live directory.
SERVING = TlsView(True, "default.pem", f"{PATHS['live']}/certs.list")
CERT = Ca().issue("default.example.com").bundle.decode()


def renderer_for(env: Env, serving: bool) -> Renderer:
    renderer = Renderer(env.settings, PATHS)
    if serving:
        renderer.tls = SERVING
    return renderer


def checkable(files: HaproxyFiles) -> dict[str, str]:
    """The files for haproxy -c. The checker copies plain files next to haproxy.cfg; a
    crt-list names its certificates by absolute path, so the check loads the certificate
    with ``crt`` instead (the crt-list itself is tested against HAProxy elsewhere)."""
    found = files.files()
    crt_list = f"crt-list {SERVING.crt_list}"
    if crt_list in found["haproxy.cfg"]:
        found["haproxy.cfg"] = found["haproxy.cfg"].replace(
            crt_list, f"crt {PATHS['live']}/default.pem"
        )
        found["default.pem"] = CERT
    return found


@pytest.fixture(scope="module")
def checker() -> Iterator[HaproxyChecker]:
    ref = image_names().ref("haproxy")
    require_images(images.client(), ref)
    with HaproxyChecker(ref) as c:
        yield c


def inst(
    service_id: str,
    address: str,
    port: int,
    *tags: str,
    index: int,
    status: str = PASSING,
    node: str = "n1",
    weights: tuple[int, int] = (1, 1),
) -> Instance:
    return Instance(
        node, service_id, address, port, tuple(sorted(set(tags))), status, *weights, index
    )


TCP_9000 = ("HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9000")
INJECTED_TAGS = Scenario(
    {
        "evil": [
            inst(
                "evil-1", "10.0.0.9", 80, ENABLE, f"HAPROXY.BACKEND.BALANCE=rr\n    {MARK}", index=1
            )
        ],
        "www": [inst("www-1", "10.0.0.1", 80, ENABLE, index=2)],
    }
)
# Found by this test: "a..b" passes the host-name pattern (runtime/consul_lb/model/build.py,
# HOST_LABEL) but HAProxy refuses it ("Can't create DNS resolution for server"), so one
# instance registered with such an address makes every later configuration fail
# haproxy -c, and the load balancer stops following Consul for all services.
EMPTY_LABEL_ADDRESS = Scenario(
    {
        "www": [
            inst("www-1", "10.0.0.1", 80, ENABLE, index=1),
            inst("www-2", "a..b", 80, ENABLE, index=2),
        ]
    }
)
# Both ask for 9000: "b" was registered first (whichever of its instances dates it)
# and gets it, unless "a" holds it already.
PORT_CLASH = Scenario(
    {
        "a": [inst("a-1", "10.0.0.1", 80, ENABLE, *TCP_9000, index=20)],
        "b": [
            inst("b-1", "10.0.0.2", 80, ENABLE, *TCP_9000, index=10, status=CRITICAL),
            inst("b-2", "10.0.0.2", 81, ENABLE, *TCP_9000, index=30),
        ],
    }
)
PORT_HELD = dataclasses.replace(PORT_CLASH, held={9000: "a"})
# A rolling deploy from http to tcp:9000: the newest passing instance shapes the backend
# (a newer critical one has no say); each instance keeps its own maxconn; an instance
# without HAPROXY.ENABLE=true gets no traffic; a malformed one is left out.
ROLLING_DEPLOY = Scenario(
    {
        "db": [
            inst("db-1", "10.0.1.1", 5432, ENABLE, "HAPROXY.BACKEND.MAXCONN=10", index=1),
            inst("db-2", "10.0.1.2", 5432, ENABLE, index=2),
            inst(
                "db-3",
                "10.0.1.3",
                5432,
                ENABLE,
                *TCP_9000,
                "HAPROXY.BACKEND.BALANCE=first",
                index=5,
            ),
            inst(
                "db-4",
                "10.0.1.4",
                5432,
                ENABLE,
                "HAPROXY.BACKEND.BALANCE=source",
                index=7,
                status=CRITICAL,
            ),
            inst("db-5", "10.0.1.5", 5432, "HAPROXY.BACKEND.MAXCONN=20", index=8),
            inst("db-6", "10.0.1.6", 5432, ENABLE, "HAPROXY.BACKEND.MAXCONN=0", index=9),
        ],
        "www": [inst("www-1", "::1", 80, ENABLE, "HAPROXY.BACKEND.MAXCONN=1000000", index=3)],
    }
)
# No instance passes: the newest one keeps the backend's shape, with no server.
NONE_PASSING = Scenario(
    {
        "api": [
            inst("api-1", "10.0.2.1", 80, ENABLE, index=1, status=WARNING),
            inst(
                "api-2",
                "10.0.2.2",
                80,
                ENABLE,
                "HAPROXY.BACKEND.BALANCE=leastconn",
                index=2,
                status=CRITICAL,
            ),
        ],
        "all-bad": [
            inst("x-1", "10.0.3.1", 80, ENABLE, "HAPROXY.PROTOCOL=udp", index=3),
            inst("x-2", "10.0.3.2", 80, ENABLE, "HAPROXY.FRONTEND.PORT=9000", index=4),
        ],
        "typo": [inst("t-1", "10.0.4.1", 80, "HAPROXY.ENABLE=yes", index=5)],
    }
)
SHOP = "HAPROXY.FRONTEND.HOSTS=shop.example.org"
# Routes two services want: "b" (registered first) gets shop.example.org from "a", and
# loses a.example.com, a's own host; "api" (registered first) gets *.example.org; two
# paths on shop.example.org (the longest wins, one stripped, with a '.' to escape); an
# HTTP check, sticky cookies and an allow list.
ROUTES = Scenario(
    {
        "a": [inst("a-1", "10.0.5.1", 80, ENABLE, f"{SHOP},*.example.org", index=30)],
        "b": [inst("b-1", "10.0.5.2", 80, ENABLE, f"{SHOP},a.{DOMAIN},b.{DOMAIN}", index=20)],
        "cart": [
            inst(
                "cart-1",
                "10.0.5.3",
                80,
                ENABLE,
                SHOP,
                "HAPROXY.FRONTEND.PATH=/cart",
                "HAPROXY.BACKEND.STRIP_PATH=true",
                index=40,
            )
        ],
        "cart-v1": [
            inst(
                "cart-v1-1",
                "10.0.5.4",
                80,
                ENABLE,
                SHOP,
                "HAPROXY.FRONTEND.PATH=/cart/v1.0",
                "HAPROXY.BACKEND.STRIP_PATH=true",
                index=50,
            )
        ],
        "api": [
            inst(
                "api-1",
                "10.0.5.5",
                80,
                ENABLE,
                "HAPROXY.FRONTEND.HOSTS=*.api.example.org,*.example.org",
                "HAPROXY.BACKEND.STICKY=true",
                "HAPROXY.BACKEND.HEALTHCHECK.PATH=/health",
                "HAPROXY.FRONTEND.ALLOW=10.0.0.0/8,2001:db8::/32",
                index=10,
            )
        ],
    }
)
# The running load balancer has shop.example.org on "a", and a.example.com on "b" (from
# before "a" existed): "a" keeps the first, and gets its own host back.
ROUTES_HELD = dataclasses.replace(
    ROUTES, routes={("shop.example.org", None): "a", (f"a.{DOMAIN}", None): "b"}, env=2
)
# Weights above 256 scaled into 1..256; a warning instance with Warning weight 0
# (published when HAPROXY_HEALTH_WARNING=include); an instance of group internal.
WEIGHTS_SCALED = Scenario(
    {
        "w": [
            inst("w-1", "10.0.6.1", 80, ENABLE, index=1, weights=(65535, 1)),
            inst("w-2", "10.0.6.2", 80, ENABLE, index=2, weights=(1000, 1)),
            inst("w-3", "10.0.6.3", 80, ENABLE, index=3),
            inst("w-4", "10.0.6.4", 80, ENABLE, index=4, status=WARNING, weights=(5, 0)),
            inst("w-5", "10.0.6.5", 80, ENABLE, "HAPROXY.GROUP=internal", index=5),
        ],
        "u": [
            inst("u-1", "10.0.7.1", 80, ENABLE, index=6, weights=(256, 1)),
            inst(
                "u-2",
                "10.0.7.2",
                80,
                ENABLE,
                "HAPROXY.BACKEND.BALANCE=leastconn",
                index=7,
                status=WARNING,
                weights=(1, 3),
            ),
            inst("u-3", "10.0.7.3", 80, ENABLE, "HAPROXY.GROUP=edge", index=8, weights=(0, 1)),
        ],
        "db": [
            inst(
                "db-1",
                "10.0.8.1",
                5432,
                ENABLE,
                *TCP_9000,
                "HAPROXY.FRONTEND.ALLOW=10.0.0.0/8,192.168.0.0/16",
                index=9,
            )
        ],
    },
    env=1,
)
# Where the README leaves a choice (Interpretation), one service each that it decides,
# and the limits of 32 hosts and networks.
ARGUABLE = Scenario(
    {
        "web": [
            inst(
                "web-1",
                "10.0.9.1",
                80,
                ENABLE,
                "HAPROXY.FRONTEND.HOSTS=Shop.Example.Org, WWW.example.org,",
                "HAPROXY.FRONTEND.ALLOW=10.1.2.3, 10.0.0.1/8",
                index=1,
            ),
            inst(
                "web-2",
                "10.0.9.2",
                80,
                ENABLE,
                "HAPROXY.FRONTEND.HOSTS=www.example.org",
                "HAPROXY.FRONTEND.HOSTS=shop.example.org",
                index=2,
            ),
        ],
        "check": [
            inst("check-1", "10.0.9.3", 80, ENABLE, index=3),
            inst("check-2", "10.0.9.4", 80, ENABLE, "HAPROXY.BACKEND.HEALTHCHECK.PATH=/", index=4),
        ],
        "strip": [
            inst("strip-1", "10.0.9.5", 80, ENABLE, "HAPROXY.BACKEND.STRIP_PATH=true", index=5)
        ],
        "db": [
            inst("db-1", "10.0.9.6", 80, ENABLE, *TCP_9000, "HAPROXY.BACKEND.STICKY=false", index=6)
        ],
        "many": [
            inst("many-1", "10.0.9.7", 80, ENABLE, f"HAPROXY.FRONTEND.HOSTS={MANY_HOSTS}", index=7),
            inst(
                "many-2",
                "10.0.9.8",
                80,
                ENABLE,
                f"HAPROXY.FRONTEND.HOSTS={MANY_HOSTS},h32.example.net",
                index=8,
            ),
            inst(
                "many-3",
                "10.0.9.9",
                80,
                ENABLE,
                f"HAPROXY.FRONTEND.HOSTS={MANY_HOSTS}",
                f"HAPROXY.FRONTEND.ALLOW={MANY_NETWORKS},10.32.0.0/16",
                index=9,
            ),
        ],
        "x": [
            inst("x-1", "10.0.9.10", 80, ENABLE, f"HAPROXY.FRONTEND.HOSTS=web.{DOMAIN}", index=10),
            inst(
                "x-2",
                "10.0.9.11",
                80,
                ENABLE,
                f"HAPROXY.FRONTEND.HOSTS=web.{DOMAIN},db.{DOMAIN}",
                "HAPROXY.FRONTEND.PATH=/x",
                index=11,
            ),
        ],
        "z": [
            inst("z-1", "10.0.9.12", 80, ENABLE, "HAPROXY.FRONTEND.PATH=/api/", index=12),
            inst("z-2", "10.0.9.13", 80, ENABLE, "HAPROXY.FRONTEND.HOSTS=localhost", index=13),
        ],
    },
    env=1,
)


def test_hostile_catalogs_render_entitled_configs_that_haproxy_accepts(
    checker: HaproxyChecker,
) -> None:
    # The image's own open-file limit: the global maxconn is fitted to it at run time.
    # One example in four renders as with too many servers to check (no `check`).
    limits = fit(SETTINGS.maxconn_global, SETTINGS.maxconn, nofile=checker.nofile)
    assert limits.checks
    unchecked = dataclasses.replace(limits, checks=False)
    # One renderer per environment for the whole run, as the runtime keeps one: its
    # per-backend cache must not change what it renders (checked against a fresh
    # renderer each time).
    renderers = {(e, s): renderer_for(ENVS[e], s) for e in range(len(ENVS)) for s in (False, True)}
    cache = model.Candidates()
    empty = model.LoadBalancer((), ())
    fixed = {
        (e, lim.checks, s): parse_sections(renderer_for(ENVS[e], s).render(empty, lim).config)[1]
        for lim in (limits, unchecked)
        for s in (False, True)
        for e in range(len(ENVS))
    }
    assert [head for head, _ in fixed[0, True, True]] == [
        "global",
        "defaults",
        "frontend stats",
        "frontend http",
        "frontend https",
        "backend consul_lb_stats",
        "backend consul_lb_runtime",
    ]
    assert [head for head, _ in fixed[0, True, False]] == [
        "global",
        "defaults",
        "frontend stats",
        "frontend http",
        "backend consul_lb_stats",
        "backend consul_lb_runtime",
    ]
    literals = template_literals(renderers[0, False].env)
    examples: list[tuple[Catalog, str, str]] = []  # catalog, config, digest of the files
    futures: dict[str, Future[CheckResult]] = {}
    totals: Counter[str] = Counter()
    derived_keys: dict[str, str] = {}
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # no .hypothesis directory in a tree shared with others
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenarios(), st.integers(0, 3))
    @example(INJECTED_TAGS, 1)
    @example(EMPTY_LABEL_ADDRESS, 1)
    @example(PORT_CLASH, 1)
    @example(PORT_HELD, 1)
    @example(ROLLING_DEPLOY, 1)
    @example(ROLLING_DEPLOY, 0)
    @example(NONE_PASSING, 1)
    @example(ROUTES, 1)
    @example(ROUTES_HELD, 3)
    @example(WEIGHTS_SCALED, 1)
    @example(dataclasses.replace(WEIGHTS_SCALED, env=3), 1)
    @example(dataclasses.replace(WEIGHTS_SCALED, env=0), 0)
    @example(ARGUABLE, 3)
    def run(scenario: Scenario, variant: int) -> None:
        lim = unchecked if variant == 0 else limits
        serving = variant == 3  # a certificate is served: the https frontend is bound
        env = ENVS[scenario.env]
        renderer = renderers[scenario.env, serving]
        catalog = to_catalog(scenario)
        lb, problems = model.build(catalog, env.settings, scenario.holders)
        # The runtime keeps a cache of services across builds: it changes nothing.
        assert model.build(catalog, env.settings, scenario.holders, cache) == (lb, problems)
        first, entitled = check_entitlement(scenario, lb, problems)
        files = renderer.render(lb, lim)
        assert renderer.render(lb, lim) == files, "a render from the cache differs"
        assert renderer_for(env, serving).render(lb, lim) == files, "the cache changed the text"
        fixed_sections = fixed[scenario.env, lim.checks, serving]
        totals["requests routed"] += check_output(
            scenario, lb, lim, files, fixed_sections, literals, derived_keys, serving
        )
        check_log_lines(lb, problems)
        digest = hashlib.sha256(repr(sorted(files.files().items())).encode()).hexdigest()
        if digest not in futures:
            futures[digest] = checker.submit(checkable(files), live=PATHS["live"])
        examples.append((catalog, files.config, digest))
        published = [e for n, e in entitled.items() if lb.backend(n) is not None]
        servers = [s for b in lb.backends for s in b.servers]
        totals["backends"] += len(lb.backends)
        totals["servers"] += len(servers)
        totals["maxconn servers"] += sum(s.maxconn is not None for s in servers)
        totals["weighted servers"] += sum(s.weight != 1 for s in servers)
        totals["scaled backends"] += sum(
            max((w for *_, w in e.published), default=0) > HAPROXY_MAX_WEIGHT for e in published
        )
        totals["warning servers"] += sum(
            i.status == WARNING for e in published for i, *_ in e.servers
        )
        totals["other groups"] += sum(e.outside for e in entitled.values())
        totals["disagreeing"] += sum(e.disagree for e in published)
        totals["shape kept"] += sum(e.shape_kept for e in published)
        totals["held ports"] += sum(lb.ports.get(p) == n for p, n in scenario.held.items())
        totals["held routes"] += sum(lb.routes.get(r) == n for r, n in scenario.routes.items())
        totals["routes lost"] += sum(e.lost for e in published)
        totals["aliases"] += sum(len(b.hosts) - 1 for b in lb.http_backends)
        totals["wildcards"] += sum(h.startswith("*.") for b in lb.http_backends for h in b.hosts)
        totals["paths"] += sum(b.path is not None for b in lb.http_backends)
        totals["stripped"] += sum(b.strip_path for b in lb.backends)
        totals["sticky"] += sum(b.sticky for b in lb.backends)
        totals["http checks"] += sum(b.healthcheck_path is not None for b in lb.backends)
        totals["allow lists"] += sum(bool(b.allow) for b in lb.backends)
        totals["skipped"] += len(lb.skipped)
        totals["tls backends"] += sum(b.tls for b in lb.backends)
        totals["redirects rendered"] += files.config.count("redirect code 308")
        totals["hsts"] += sum(b.hsts is not None for b in lb.backends)
        totals["left out"] += len(problems)
        totals["other reading"] += not first
        lines = [s.reason for s in lb.skipped] + problems
        totals["longest log line"] = max([totals["longest log line"], *map(len, lines)])

    run()
    generated = time.monotonic() - started
    verdicts = {digest: future.result(timeout=120) for digest, future in futures.items()}
    invalid = [(c, config, verdicts[d]) for c, config, d in examples if not verdicts[d].ok]
    warnings = Counter(
        re.sub(r"^.*?: config : ", "", w) for r in verdicts.values() for w in r.warnings
    )
    print(
        f"\nhaproxy -c ({checker.version}) on {len(examples)} rendered configs "
        f"({len(verdicts)} distinct): {len(invalid)} invalid; generated and checked in "
        f"{generated:.1f}s + {time.monotonic() - started - generated:.1f}s; {dict(totals)}"
    )
    for text, n in warnings.most_common(10):
        print(f"  haproxy warning x{n}: {text}")
    assert len(examples) >= EXAMPLES
    assert not invalid, f"haproxy -c rejected {len(invalid)} rendered configs:\n" + "\n".join(
        describe_rejections(invalid)
    )


def describe_rejections(invalid: list[tuple[Catalog, str, CheckResult]]) -> Iterator[str]:
    """One entry per kind of HAProxy error: the error, the offending line and the service
    it belongs to (long strings cut short)."""
    seen: set[str] = set()
    for catalog, config, result in invalid:
        alert = re.sub(r"\(\d+\)|/tmp/check-[^/]+/", "", result.alerts[0] if result.alerts else "")
        kind = re.sub(r"'[^'\n]*?'(?= :|$)|:\d+\]", "", alert)  # names, line numbers out
        if kind in seen:
            continue
        seen.add(kind)
        found = re.search(r"haproxy\.cfg:(\d+)", alert)
        lines = config.split("\n")[: int(found.group(1))] if found else []
        section = next((ln for ln in reversed(lines) if ln[:1].isalpha()), "")
        service = catalog.get(section.split(" ")[-1].removesuffix(f".{DOMAIN}"))
        shown = re.sub(r"(.)\1{20,}", lambda m: f"{m.group(1)}*{len(m.group(0))}", repr(service))
        offending = lines[-1].strip() if lines else ""
        yield f"- {alert}\n  line: {offending!r}\n  in {section!r} from {shown[:600]}"

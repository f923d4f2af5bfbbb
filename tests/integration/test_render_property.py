"""Hostile catalogs through the model and the renderer, every result checked with the
HAProxy of the project's image.

Tags are read per instance (README, "Service tags"), so each generated instance carries
its own: instances of one service that disagree on protocol, balance or frontend port
(a rolling deploy), instances without ``HAPROXY.ENABLE=true``, each instance with its own
``HAPROXY.BACKEND.MAXCONN`` or none, the TLS tags (``HAPROXY.FRONTEND.REDIRECT_HTTPS``,
``HAPROXY.FRONTEND.HSTS``, ``HAPROXY.BACKEND.TLS``), instances that pass, warn or fail
their checks, each
registered at its own Consul ``CreateIndex``; some examples also say which tcp ports the
running load balancer holds. Next to clean services, hostile ones: names that are not DNS
labels, tag values with whitespace, newlines, ``#``, quotes, backslashes, control and
non-ASCII characters or thousands of characters, unknown ``HAPROXY.*`` tags, duplicate
and conflicting tags, ports out of range, and instances with hostile addresses, IDs and
nodes. One example in four renders as with a certificate served (the https frontend
bound, the redirect rendered). Three things are checked for every example:

1. entitlement, against an oracle written here from the README's contract rather than
   from runtime/consul_lb/model/ (it imports data types only): which services are
   published, skipped or ignored, the shape of each backend (from the most recently
   registered passing instance, or while none passes the most recently registered one),
   the tcp ports (held ports stay with their holder, then the earliest registered
   service wins), and exactly which instances become servers, each with its own maxconn;
2. the rendered text says what the model says and nothing else: every section and line
   is one of the templates' shapes with the model's values, the fixed sections are
   byte-identical to those of an empty catalog, the renderer's per-backend cache changes
   nothing (a fresh renderer gives the same bytes), the Host map holds each http host in
   both forms, and no hostile string (all of them carry the marker ``EVIL!``, which no
   valid value can contain) appears in any file;
3. ``haproxy -c`` of the image accepts the files (each distinct rendering once, run in
   parallel in one long-lived container while hypothesis generates the next examples,
   and collected at the end).
"""

from __future__ import annotations

import dataclasses
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

import jinja2
import pytest
from consul_lb import model
from consul_lb.consul.catalog import CRITICAL, PASSING, WARNING, Catalog, Instance
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import Limits, fit
from consul_lb.model.claims import Holders
from consul_lb.render import BACKEND_TEMPLATE, HAPROXY_TEMPLATE, HaproxyFiles, Renderer
from consul_lb.settings import from_env
from consul_lb.tls.certs import TlsView
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools import images
from devtools.certs import Ca
from devtools.haproxy_check import CheckResult, HaproxyChecker
from tests.integration.conftest import image_names, require_images

EXAMPLES = 1000
DOMAIN = "example.com"
SETTINGS = from_env({"HAPROXY_DOM": DOMAIN})
PATHS = Paths(Path("/var/lib/consul-lb")).template_paths()
# Every hostile string contains this. '!' is valid in no field (DNS label, tag value,
# address, server name), so a hostile string can never become valid by accident, and
# the marker's absence from the output proves that no hostile string got through.
MARK = "EVIL!"
ENABLE = "HAPROXY.ENABLE=true"


@dataclass(frozen=True)
class Scenario:
    """A catalog as the watcher reads it (service name -> its instances, each with its
    own tags), and the tcp ports the running load balancer holds (port -> service)."""

    services: dict[str, list[Instance]]
    held: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------- strategies

# Strategies draw whole strings from alphabets (one draw each) rather than with
# from_regex (one draw per character): generation, not haproxy -c, was the slow part.
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
ALNUM = LOWER + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# DNS labels: no '-' at either end.
LABEL = st.text(LOWER + "-", min_size=1, max_size=12).map(lambda s: s.strip("-") or "x")
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


@st.composite
def hostile(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """``base`` with an injection, the marker and a tail (short or very long) inserted."""
    text = draw(base)
    pos = draw(st.integers(0, len(text)))
    injection = draw(st.sampled_from(INJECTIONS))
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
        LABEL if kind < 5 else BAD_NAMES if kind < 8 else hostile(LABEL)
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
    "FRONTEND.REDIRECT_HTTPS": st.sampled_from(["true", "true", "false", "True"]),
    "FRONTEND.HSTS": st.one_of(
        st.sampled_from([0, 1, 31536000, 63072000, 315360000]), st.integers(0, 315360000)
    ).map(str),
    "BACKEND.TLS": st.sampled_from(["true", "true", "false", "TRUE"]),
}
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
    "FRONTEND.REDIRECT_HTTPS": ("", "yes", "1", "https", "true "),
    "FRONTEND.HSTS": ("", "-1", "315360001", "1y", "31536000; preload", "1e6", "0x10"),
    "BACKEND.TLS": ("", "ssl", "on", "verify", " true"),
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
)


@st.composite
def bad_tag(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(sorted(GOOD_VALUES)))
    return draw(
        st.one_of(
            hostile(GOOD_VALUES[key]).map(lambda v: f"HAPROXY.{key}={v}"),
            st.sampled_from(INVALID_VALUES[key]).map(lambda v: f"HAPROXY.{key}={v}"),
            st.sampled_from(UNKNOWN_KEYS).map(lambda k: f"HAPROXY.{k}=true"),
            st.just(f"HAPROXY.{key}"),  # no '=value'
            hostile(st.just(key)).map(lambda k: f"HAPROXY.{k}=true"),
        )
    )


def good_tag(key: str) -> st.SearchStrategy[str]:
    return GOOD_VALUES[key].map(lambda v: f"HAPROXY.{key}={v}")


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


@st.composite
def instance_tags(draw: st.DrawFn, clean: bool = False) -> list[str]:
    """Tags of one instance; ``clean``: enabled and without malformed or conflicting tags
    (which still leaves room for a tcp service without a port, an HTTP-only balance in
    tcp mode, or a taken tcp port)."""
    tags: list[str] = []
    if clean:
        tags.append(ENABLE)
    elif draw(st.integers(0, 9)) < 8:
        tags.append(draw(good_tag("ENABLE")))
    if draw(st.booleans()):
        tags.append("HAPROXY.PROTOCOL=tcp")
        if draw(st.integers(0, 4)) > 0:
            tags.append(draw(good_tag("FRONTEND.PORT")))
    elif draw(st.booleans()):
        tags.append("HAPROXY.PROTOCOL=http")
    for key in ("BACKEND.BALANCE", "BACKEND.MAXCONN"):
        if draw(st.booleans()):
            tags.append(draw(good_tag(key)))
    for key in ("FRONTEND.REDIRECT_HTTPS", "FRONTEND.HSTS", "BACKEND.TLS"):
        if draw(st.integers(0, 3)) == 0:
            tags.append(draw(good_tag(key)))
    tags += draw(st.lists(FOREIGN_TAGS, max_size=2))
    if not clean and draw(st.booleans()):
        tags += draw(st.lists(bad_tag(), min_size=1, max_size=2))
    if not clean and draw(st.integers(0, 3)) == 0:  # a second value for a key: a conflict
        tags.append(draw(good_tag(draw(st.sampled_from(sorted(GOOD_VALUES))))))
    if len(tags) > 0 and draw(st.booleans()):  # an exact duplicate: harmless
        tags.append(draw(st.sampled_from(tags)))
    return tags


HOSTNAMES = st.lists(LABEL, min_size=1, max_size=3).map(".".join)
GOOD_ADDRESSES = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), HOSTNAMES)
# Addresses a reader could argue about; the model may take or leave them, but what it
# takes must pass haproxy -c.
EDGE_ADDRESSES = st.one_of(
    st.text("0123456789.", min_size=1, max_size=17),
    st.tuples(st.sampled_from(ALNUM), st.text(ALNUM + ".-", max_size=40)).map("".join),
    st.sampled_from(["0.0.0.0", "::", "::1", "localhost", "a" * 63 + "." + "b" * 63, "x" * 253]),
)
BAD_ADDRESSES = st.one_of(
    hostile(st.one_of(st.ip_addresses().map(str), HOSTNAMES)),
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
# Consul's Weights: nothing in the contract reads them, so they must change nothing.
WEIGHTS = st.sampled_from([1, 1, 0, 10, 65535])


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


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """One to three clean services next to zero to three of any kind; every instance
    registered at its own CreateIndex; sometimes tcp ports held by the running load
    balancer (by services that could have held them: DNS labels, one port each)."""
    services: dict[str, list[Instance]] = {}
    for clean in [True] * draw(st.integers(1, 3)) + [False] * draw(st.integers(0, 3)):
        name = draw(LABEL if clean else names())
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
    return Scenario(services, held)


def to_catalog(scenario: Scenario) -> Catalog:
    """As the watcher builds it: a service's tags are the union of its instances'."""
    return Catalog.build(
        {name: {t for i in found for t in i.tags} for name, found in scenario.services.items()},
        scenario.services,
    )


# ---------------------------------------------------------------- the oracle

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
INT_VALUE = re.compile(r"[1-9][0-9]{0,6}", re.ASCII)
TAG_VALID: dict[str, Callable[[str], bool]] = {
    "ENABLE": lambda v: v.isascii() and v.lower() in {"true", "false"},
    "PROTOCOL": lambda v: v in {"http", "tcp"},
    "BACKEND.BALANCE": lambda v: v in BALANCE_SIMPLE or bool(re.fullmatch(BALANCE_ARG, v)),
    "BACKEND.MAXCONN": lambda v: bool(INT_VALUE.fullmatch(v)) and int(v) <= 1_000_000,
    "FRONTEND.PORT": lambda v: bool(INT_VALUE.fullmatch(v)) and int(v) <= 65535,
    # README: true or false; a max-age in seconds, 0 to ten years.
    "FRONTEND.REDIRECT_HTTPS": lambda v: v.isascii() and v.lower() in {"true", "false"},
    "FRONTEND.HSTS": lambda v: bool(re.fullmatch(r"[0-9]{1,9}", v)) and int(v) <= 315360000,
    "BACKEND.TLS": lambda v: v.isascii() and v.lower() in {"true", "false"},
}
# The README: "uri, hdr and url_param read HTTP: http services only".
HTTP_ONLY = re.compile(r"uri|hdr\(.*|url_param .*")
PUBLISHED, SKIPPED, IGNORED = "published", "skipped", "ignored"


@dataclass(frozen=True)
class Interpretation:
    """Where the README leaves a choice, one way to take it. An example passes when the
    load balancer is what one whole interpretation entitles it to.

    - ``strict_duplicates``: are ``HAPROXY.ENABLE=true`` and ``HAPROXY.ENABLE=TRUE`` on
      one instance conflicting tags (a malformed instance) or the same tag twice?
    - ``age``: "at start, the one registered first gets it [the tcp port]": registered
      first by which of its instances: any (``all``), any with an ``HAPROXY.*`` tag
      (``tagged``), any that asks to be published or is malformed (``asking``), or any
      that is published when it passes (``enabled``)?
    """

    strict_duplicates: bool
    age: str


INTERPRETATIONS = [
    Interpretation(strict, age)
    for strict, age in itertools.product((True, False), ("all", "tagged", "asking", "enabled"))
]


# protocol, balance, tcp port, redirect to https, HSTS max-age, TLS to the instances
Shape = tuple[str, str, int | None, bool, int | None, bool]


@dataclass(frozen=True)
class Reading:
    """What one instance's ``HAPROXY.*`` tags say, per the README's table."""

    malformed: bool
    enabled: bool  # well-formed and HAPROXY.ENABLE=true
    asks: bool  # carries HAPROXY.ENABLE=true (and no other ENABLE value), malformed or not
    protocol: str = "http"
    balance: str = "roundrobin"
    port: int | None = None
    maxconn: int | None = None
    redirect: bool = False
    hsts: int | None = None
    tls: bool = False

    @property
    def shape(self) -> Shape:
        """What is one per backend."""
        return self.protocol, self.balance, self.port, self.redirect, self.hsts, self.tls


def read_tags(tags: Sequence[str], strict_duplicates: bool) -> Reading | None:
    """None for an instance with none of our tags."""
    ours = {t for t in tags if t.startswith("HAPROXY.")}
    if not ours:
        return None
    malformed = False
    values: dict[str, set[str]] = {}
    for tag in ours:
        key, sep, value = tag[len("HAPROXY.") :].partition("=")
        if not sep or key not in TAG_VALID or not TAG_VALID[key](value):
            malformed = True  # unknown, or malformed
        else:
            values.setdefault(key, set()).add(value)
    enable = {v.lower() for v in values.get("ENABLE", ())}
    for key, seen in values.items():
        meanings = enable if key == "ENABLE" else seen
        if len(meanings) > 1 or (strict_duplicates and len(seen) > 1):
            malformed = True  # two values for one option
    options = {key: min(seen) for key, seen in values.items()}
    protocol = options.get("PROTOCOL", "http")
    balance = options.get("BACKEND.BALANCE", "roundrobin")
    # A frontend port is for tcp services; HTTP-only algorithms for http services.
    if (protocol == "http" and "FRONTEND.PORT" in options) or (
        protocol == "tcp" and HTTP_ONLY.fullmatch(balance)
    ):
        malformed = True
    redirect = options.get("FRONTEND.REDIRECT_HTTPS", "false").lower() == "true"
    # README: redirect and HSTS are for http services.
    if protocol == "tcp" and (redirect or "FRONTEND.HSTS" in options):
        malformed = True
    asks = enable == {"true"}
    if malformed:
        return Reading(malformed=True, enabled=False, asks=asks)
    return Reading(
        malformed=False,
        enabled=asks,
        asks=asks,
        protocol=protocol,
        balance=balance,
        port=int(options["FRONTEND.PORT"]) if "FRONTEND.PORT" in options else None,
        maxconn=int(options["BACKEND.MAXCONN"]) if "BACKEND.MAXCONN" in options else None,
        redirect=redirect,
        hsts=int(options["FRONTEND.HSTS"]) if "FRONTEND.HSTS" in options else None,
        tls=options.get("BACKEND.TLS", "false").lower() == "true",
    )


@dataclass(frozen=True)
class Entitled:
    """What one service is entitled to under one interpretation."""

    outcomes: frozenset[str]
    shape: Shape = ("http", "roundrobin", None, False, None, False)
    servers: tuple[tuple[Instance, Reading], ...] = ()  # passing, enabled, valid port
    age: int = 0
    malformed: int = 0  # instances left out for their tags (each logged)
    disagree: bool = False  # passing instances disagree on the backend's options
    shape_kept: bool = False  # no instance passes: the newest one shapes the backend


def entitle(name: str, found: Sequence[Instance], interp: Interpretation) -> Entitled:
    """One service on its own, before the services' tcp ports are compared."""
    readings = [(i, read_tags(i.tags, interp.strict_duplicates)) for i in found]
    tagged = [(i, r) for i, r in readings if r is not None]
    enabled = [(i, r) for i, r in tagged if r.enabled]
    malformed = [(i, r) for i, r in tagged if r.malformed]
    if not enabled:
        if not malformed:
            return Entitled(frozenset({IGNORED}))  # nothing asks to be published
        # Every instance that asks to be published is malformed: skipped. Malformed
        # instances none of which clearly asks (HAPROXY.ENABLE=yes, or only a bad tag):
        # the contract does not say whether they ask, so skipping or ignoring will do.
        asks = any(r.asks for _, r in malformed)
        return Entitled(frozenset({SKIPPED} if asks else {SKIPPED, IGNORED}))
    if not DNS_LABEL.fullmatch(name):
        return Entitled(frozenset({SKIPPED}))
    passing = [(i, r) for i, r in enabled if i.status == PASSING]
    # Only passing instances have a say; while none passes, the newest one has it.
    _, leader = max(passing or enabled, key=lambda ir: ir[0].create_index)
    if leader.protocol == "tcp" and leader.port is None:
        return Entitled(frozenset({SKIPPED}))
    dating = {
        "all": found,
        "tagged": [i for i, _ in tagged],
        "asking": [i for i, r in tagged if r.enabled or r.malformed],
        "enabled": [i for i, _ in enabled],
    }[interp.age]
    return Entitled(
        frozenset({PUBLISHED}),
        shape=leader.shape,
        servers=tuple((i, r) for i, r in passing if 1 <= i.port <= 65535),
        age=min(i.create_index for i in dating),
        malformed=len(malformed),
        disagree=len({r.shape for _, r in passing}) > 1,
        shape_kept=not passing,
    )


def expect(scenario: Scenario, interp: Interpretation) -> dict[str, Entitled]:
    """Every service's entitlement: a tcp port goes to the service that holds it, else to
    the service registered first; the http and stats ports are HAProxy's own."""
    found = {name: entitle(name, insts, interp) for name, insts in scenario.services.items()}
    taken = {SETTINGS.http_port, SETTINGS.stats_port}

    def claim_order(name: str) -> tuple[bool, int, str]:
        port = found[name].shape[2]
        return scenario.held.get(port or 0) != name, found[name].age, name

    for name in sorted((n for n, e in found.items() if PUBLISHED in e.outcomes), key=claim_order):
        port = found[name].shape[2]
        if port is None:
            continue
        if port in taken:
            found[name] = Entitled(frozenset({SKIPPED}))  # held by another
        else:
            taken.add(port)
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
        got = (b.protocol, b.balance, b.frontend_port, b.redirect_https, b.hsts, b.tls)
        if b.name != f"{name}.{DOMAIN}" or got != e.shape:
            out.append(f"service {name!r}: backend {b.name} {got}, expected {e.shape}")
        out += [f"service {name!r}: {p}" for p in server_differences(e.servers, b.servers)]
    return out


def server_differences(
    entitled: Sequence[tuple[Instance, Reading]], servers: Sequence[model.Server]
) -> list[str]:
    """One server per entitled instance with a valid address (maybe one per edge
    address), with the instance's own maxconn; named after a clean, unique service ID."""

    def key(i: Instance, r: Reading) -> tuple[str, int, int | None]:
        return i.address, i.port, r.maxconn

    required = Counter(key(i, r) for i, r in entitled if address_class(i.address) == "good")
    allowed = required + Counter(
        key(i, r) for i, r in entitled if address_class(i.address) == "edge"
    )
    actual = Counter((s.address, s.port, s.maxconn) for s in servers)
    out = []
    if required - actual:
        out.append(f"instances left out: {required - actual}")
    if actual - allowed:
        out.append(f"servers the input was not entitled to: {actual - allowed}")
    names = [s.name for s in servers]
    if len(names) != len(set(names)):
        out.append(f"duplicate server names {names}")
    if not all(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", n, re.ASCII) for n in names):
        out.append(f"server names HAProxy may refuse: {names}")
    # A clean ID, unique among the instances that may become servers, names its server.
    ids = Counter(i.service_id for i, r in entitled if address_class(i.address) != "bad")
    by_name = {s.name: s for s in servers}
    for i, r in entitled:
        clean = re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", i.service_id, re.ASCII)
        if clean and ids[i.service_id] == 1 and address_class(i.address) == "good":
            s = by_name.get(i.service_id)
            if s is None or (s.address, s.port, s.maxconn) != key(i, r):
                out.append(f"instance {i.service_id!r} not named after its ID")
    return out


def check_entitlement(
    scenario: Scenario, lb: model.LoadBalancer, problems: Sequence[str]
) -> tuple[Interpretation, dict[str, Entitled]]:
    """The interpretation ``lb`` follows, and what it entitles; fails when none fits."""
    published = {b.service for b in lb.backends}
    skipped = {s.service for s in lb.skipped}
    assert not published & skipped, "a service both published and skipped"
    assert len(published) == len(lb.backends) and len(skipped) == len(lb.skipped)
    found: list[list[str]] = []
    for interp in INTERPRETATIONS:
        entitled = expect(scenario, interp)
        if not (diff := differences(entitled, lb)):
            # README: an instance left out for its tags is logged (one line each).
            left_out = sum(e.malformed for n, e in entitled.items() if n in published)
            assert len(problems) >= left_out, f"{left_out} instances left out: {problems}"
            return interp, entitled
        found.append(diff)
    best = min(found, key=len)
    raise AssertionError(
        f"no reading of the README entitles the input to this load balancer "
        f"(closest, {len(best)} differences):\n  " + "\n  ".join(best)
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
    """A dynamic section: lines that carry the model's values (each exactly once, the
    server lines in the model's order) and lines that must not be there."""

    header: str
    values: list[str]
    forbidden: tuple[str, ...] = ()


def expected_dynamic_sections(
    lb: model.LoadBalancer, limits: Limits, serving: bool = False
) -> list[Expected]:
    """The model's frontends and backends as the templates' value-carrying lines;
    ``serving``: a certificate is served (the https frontend is bound)."""
    out: list[Expected] = []
    for b in lb.tcp_backends:
        out.append(
            Expected(
                f"frontend tcp_{b.frontend_port}",
                [f"bind :{b.frontend_port}", "mode tcp", f"default_backend {b.name}"],
            )
        )
    for b in lb.backends:
        http = b.protocol == "http"
        lines = [
            f"mode {b.protocol}",
            f"balance {b.balance}",
            "option tcp-check",
            "default-server inter 10s fall 1 init-addr last,libc,none",
        ]
        http_only = [
            "option forwardfor",
            "http-request set-header X-Forwarded-Port %[dst_port]",
        ]
        lines += http_only if http else []
        # README: a 308 to https, same host and path, the port named unless 443 (only
        # while a certificate is served); HSTS on https responses.
        if b.redirect_https and serving:
            lines.append(
                "http-request redirect code 308 location "
                "https://%[req.hdr(host),field(1,:)]:8443%[pathq] unless { ssl_fc }"
            )
        if b.hsts is not None:
            lines.append(
                "http-response set-header Strict-Transport-Security "
                f'"max-age={b.hsts}" if {{ ssl_fc }}'
            )
        for s in b.servers:
            address = f"ipv6@{s.address}" if ":" in s.address else s.address
            check = " check" if limits.checks else ""
            maxconn = f" maxconn {s.maxconn}" if s.maxconn is not None else ""
            # README: TLS to the instances, not verified without HAPROXY_BACKEND_CA_FILE.
            tls = " ssl verify none" if b.tls else ""
            lines.append(f"server {s.name} {address}:{s.port}{check}{maxconn}{tls}")
        out.append(Expected(f"backend {b.name}", lines, () if http else tuple(http_only)))
    return [
        Expected(e.header, [f"    {v}" for v in e.values], tuple(f"    {f}" for f in e.forbidden))
        for e in out
    ]


def template_literals(env: jinja2.Environment) -> dict[str, set[str]]:
    """Lines of the templates that render tcp frontends (the loop in haproxy.cfg.j2) and
    backends (backend.cfg.j2) and that hold no Jinja2 at all: static directives and
    comments, the same for every input. Read from the templates in use, so that a new
    static directive there (another engineer's ``option tcplog``) does not break this
    test, while anything that depends on the input still has to be one of the value
    lines above."""
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
    serving: bool = False,
) -> None:
    expected = expected_dynamic_sections(lb, limits, serving)
    assert [h for h, _ in sections] == [e.header for e in expected], "sections differ from model"
    for (header, body), want in zip(sections, expected, strict=True):
        static = literals[header.split()[0]]
        values = Counter(want.values)
        extra = [ln for ln in body if ln not in values and ln not in static]
        assert not extra, f"{header}: lines the input was not entitled to: {extra}"
        assert Counter(ln for ln in body if ln in values) == values, f"{header}: {body}"
        servers = [ln for ln in body if ln.startswith("    server ")]
        assert servers == [v for v in want.values if v.startswith("    server ")], header
        assert not set(body) & set(want.forbidden), f"{header}: http directives in tcp mode"


def printable_ascii(text: str) -> bool:
    return re.fullmatch(r"[ -~\n]*", text) is not None


def hostile_strings(scenario: Scenario) -> Iterator[str]:
    for name, found in scenario.services.items():
        yield from [name] if MARK in name else []
        for i in found:
            yield from (t for t in (i.node, i.service_id, i.address, *i.tags) if MARK in t)


def check_output(
    scenario: Scenario,
    lb: model.LoadBalancer,
    limits: Limits,
    files: HaproxyFiles,
    fixed: list[tuple[str, list[str]]],
    literals: Mapping[str, set[str]],
    serving: bool = False,
) -> None:
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
    check_dynamic_sections(sections[len(fixed) :], lb, limits, literals, serving)
    # README: each http host, and its absolute form with a trailing dot, to its backend.
    hosts = [f"{h} {b.name}\n" for b in lb.http_backends for h in (b.name, f"{b.name}.")]
    assert sorted(files.hosts_map.splitlines(keepends=True)) == sorted(hosts), files.hosts_map
    assert files.health_map == ""  # not waiting for Consul, not draining
    for b in lb.backends:
        assert re.fullmatch(rf"[a-z0-9-]{{1,63}}\.{re.escape(DOMAIN)}", b.name, re.ASCII)


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


def renderer_for(serving: bool) -> Renderer:
    renderer = Renderer(SETTINGS, PATHS)
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
) -> Instance:
    return Instance(node, service_id, address, port, tuple(sorted(set(tags))), status, 1, 1, index)


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


def test_hostile_catalogs_render_entitled_configs_that_haproxy_accepts(
    checker: HaproxyChecker,
) -> None:
    # The image's own open-file limit: the global maxconn is fitted to it at run time.
    # One example in four renders as with too many servers to check (no `check`).
    limits = fit(SETTINGS.maxconn_global, SETTINGS.maxconn, nofile=checker.nofile)
    assert limits.checks
    unchecked = dataclasses.replace(limits, checks=False)
    # One renderer for the whole run, as the runtime keeps one: its per-backend cache
    # must not change what it renders (checked against a fresh renderer each time).
    renderers = {serving: renderer_for(serving) for serving in (False, True)}
    cache = model.Candidates()
    empty = model.LoadBalancer((), ())
    fixed = {
        (lim.checks, serving): parse_sections(renderer_for(serving).render(empty, lim).config)[1]
        for lim in (limits, unchecked)
        for serving in (False, True)
    }
    assert [head for head, _ in fixed[True, True]] == [
        "global",
        "defaults",
        "frontend stats",
        "frontend http",
        "frontend https",
        "backend consul_lb_stats",
        "backend consul_lb_runtime",
    ]
    assert [head for head, _ in fixed[True, False]] == [
        "global",
        "defaults",
        "frontend stats",
        "frontend http",
        "backend consul_lb_stats",
        "backend consul_lb_runtime",
    ]
    literals = template_literals(renderers[False].env)
    examples: list[tuple[Catalog, str, str]] = []  # catalog, config, digest of the files
    futures: dict[str, Future[CheckResult]] = {}
    totals: Counter[str] = Counter()
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
    def run(scenario: Scenario, variant: int) -> None:
        lim = unchecked if variant == 0 else limits
        serving = variant == 3  # a certificate is served: the https frontend is bound
        renderer = renderers[serving]
        catalog = to_catalog(scenario)
        lb, problems = model.build(catalog, SETTINGS, Holders(ports=scenario.held))
        # The runtime keeps a cache of services across builds: it changes nothing.
        assert model.build(catalog, SETTINGS, Holders(ports=scenario.held), cache) == (lb, problems)
        interp, entitled = check_entitlement(scenario, lb, problems)
        files = renderer.render(lb, lim)
        assert renderer.render(lb, lim) == files, "a render from the cache differs"
        assert renderer_for(serving).render(lb, lim) == files, "the cache changed the text"
        check_output(scenario, lb, lim, files, fixed[lim.checks, serving], literals, serving)
        check_log_lines(lb, problems)
        digest = hashlib.sha256(repr(sorted(files.files().items())).encode()).hexdigest()
        if digest not in futures:
            futures[digest] = checker.submit(checkable(files), live=PATHS["live"])
        examples.append((catalog, files.config, digest))
        published = [e for n, e in entitled.items() if lb.backend(n) is not None]
        totals["backends"] += len(lb.backends)
        totals["servers"] += sum(len(b.servers) for b in lb.backends)
        totals["maxconn servers"] += sum(
            s.maxconn is not None for b in lb.backends for s in b.servers
        )
        totals["disagreeing"] += sum(e.disagree for e in published)
        totals["shape kept"] += sum(e.shape_kept for e in published)
        totals["held ports"] += sum(lb.ports.get(p) == n for p, n in scenario.held.items())
        totals["skipped"] += len(lb.skipped)
        totals["tls backends"] += sum(b.tls for b in lb.backends)
        totals["redirects rendered"] += files.config.count("redirect code 308")
        totals["hsts"] += sum(b.hsts is not None for b in lb.backends)
        totals["left out"] += len(problems)
        if interp != INTERPRETATIONS[0]:
            totals["other reading"] += 1
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

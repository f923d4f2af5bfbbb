"""Hostile catalogs through the model and the renderer, every result checked with the
HAProxy of the project's image.

Each generated catalog mixes clean services with hostile ones: names that are not DNS
labels, tag values with whitespace, newlines, ``#``, quotes, backslashes, control and
non-ASCII characters or thousands of characters, unknown ``HAPROXY.*`` tags, duplicate
and conflicting tags, ports out of range, and instances with hostile addresses, IDs and
nodes. Three things are checked for every example:

1. entitlement, against an oracle written here from the contract (README, "Service
   tags") rather than from runtime/consul_lb/model/tags.py: exactly the services whose tags are all
   valid, whose name is a DNS label and whose tcp port is free are published, with the
   options their tags ask for, and exactly their instances with a valid address and
   port become servers;
2. the rendered text says what the model says and nothing else: every section and line
   is one of the template's shapes with the model's values, the fixed sections are
   byte-identical to those of an empty catalog, and no hostile string (all of them
   carry the marker ``EVIL!``, which no valid value can contain) appears anywhere;
3. ``haproxy -c`` of the image accepts the files (run in parallel in one long-lived
   container while hypothesis generates the next examples, and collected at the end).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest
from consul_lb import model
from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import Limits, fit
from consul_lb.render import (
    HAPROXY_TEMPLATE,
    TEMPLATE_DIRS,
    HaproxyFiles,
    environment,
    render_haproxy,
)
from consul_lb.settings import from_env
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools import images
from devtools.haproxy_check import CheckResult, HaproxyChecker
from tests.integration.conftest import image_names, require_images

EXAMPLES = 1000
DOMAIN = "example.com"
SETTINGS = from_env({"HAPROXY_DOM": DOMAIN})
PATHS = Paths(Path("/var/lib/consul-lb")).template_paths()
ENV = environment(TEMPLATE_DIRS)
# Every hostile string contains this. '!' is valid in no field (DNS label, tag value,
# address, server name), so a hostile string can never become valid by accident, and
# the marker's absence from the output proves that no hostile string got through.
MARK = "EVIL!"

# A service: (name, tags, instances); an instance: (node, service_id, address, port).
InstanceSpec = tuple[str, str, str, int]
ServiceSpec = tuple[str, list[str], list[InstanceSpec]]


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
def service_tags(draw: st.DrawFn, clean: bool = False) -> list[str]:
    """Tags of a service; ``clean``: valid, enabled and without conflicts (which still
    leaves room for a taken tcp port)."""
    tags: list[str] = []
    if clean:
        tags.append("HAPROXY.ENABLE=true")
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
    tags += draw(st.lists(FOREIGN_TAGS, max_size=2))
    if not clean and draw(st.booleans()):
        tags += draw(st.lists(bad_tag(), min_size=1, max_size=2))
    if not clean and draw(st.integers(0, 3)) == 0:  # a second value for a key: a conflict
        tags.append(draw(good_tag(draw(st.sampled_from(sorted(GOOD_VALUES))))))
    if len(tags) > 0 and draw(st.booleans()):  # an exact duplicate: harmless
        tags.append(draw(st.sampled_from(tags)))
    # No shuffling: Catalog.build sorts a service's tags anyway.
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
INSTANCES = st.tuples(
    st.one_of(LABEL, st.sampled_from(["n1", "n2"]), hostile(LABEL)),
    SERVICE_IDS,
    st.one_of(GOOD_ADDRESSES, GOOD_ADDRESSES, EDGE_ADDRESSES, BAD_ADDRESSES),
    PORTS,
)


@st.composite
def catalogs(draw: st.DrawFn) -> list[ServiceSpec]:
    """One to three clean services (so that most examples publish something and give
    haproxy -c real backends to check) next to zero to three of any kind."""
    specs: dict[str, ServiceSpec] = {}
    for clean in [True] * draw(st.integers(1, 3)) + [False] * draw(st.integers(0, 3)):
        name = draw(LABEL if clean else names())
        tags = draw(service_tags(clean))
        specs.setdefault(name, (name, tags, draw(st.lists(INSTANCES, max_size=3))))
    return list(specs.values())


def to_catalog(specs: Sequence[ServiceSpec]) -> Catalog:
    """As the watcher builds it: tags per service name, instances per service name."""
    return Catalog.build(
        {name: tags for name, tags, _ in specs},
        {name: [Instance(*inst) for inst in insts] for name, _, insts in specs},
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
}
PUBLISHED, SKIPPED, IGNORED = "published", "skipped", "ignored"


def expected_by_tags(tags: Sequence[str]) -> tuple[set[str], dict[str, str]]:
    """What a service's tags entitle it to: the acceptable outcomes, and the options."""
    values: dict[str, set[str]] = {}
    for tag in set(tags):
        if not tag.startswith("HAPROXY."):
            continue  # someone else's tag
        key, sep, value = tag[len("HAPROXY.") :].partition("=")
        if not sep or key not in TAG_VALID or not TAG_VALID[key](value):
            return {SKIPPED}, {}
        values.setdefault(key, set()).add(value)
    ambiguous = False
    for key, seen in values.items():
        if len(seen) > 1:
            # "true" next to "TRUE" mean the same; whether that is a conflict is not
            # the contract's to say, so either outcome is accepted.
            if key == "ENABLE" and len({v.lower() for v in seen}) == 1:
                ambiguous = True
            else:
                return {SKIPPED}, {}
    options = {key: min(seen) for key, seen in values.items()}
    if options.get("PROTOCOL", "http") == "http" and "FRONTEND.PORT" in options:
        return {SKIPPED}, {}
    # The README: algorithms that read HTTP are refused for tcp services.
    if options.get("PROTOCOL") == "tcp" and options.get("BACKEND.BALANCE", "").startswith(
        ("uri", "url_param", "hdr(")
    ):
        return {SKIPPED}, {}
    outcome = PUBLISHED if options.get("ENABLE", "false").lower() == "true" else IGNORED
    return ({outcome, SKIPPED} if ambiguous else {outcome}), options


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


def check_entitlement(catalog: Catalog, lb: model.LoadBalancer) -> None:
    published = {b.service: b for b in lb.backends}
    skipped = {s.service for s in lb.skipped}
    assert not published.keys() & skipped, "a service both published and skipped"
    assert len(published) == len(lb.backends) and len(skipped) == len(lb.skipped)
    ports_used = {SETTINGS.http_port, SETTINGS.stats_port}
    for service in sorted(catalog.services, key=lambda s: s.name):
        acceptable, options = expected_by_tags(service.tags)
        protocol = options.get("PROTOCOL", "http")
        port = int(options["FRONTEND.PORT"]) if "FRONTEND.PORT" in options else None
        if PUBLISHED in acceptable and (
            not DNS_LABEL.fullmatch(service.name)
            or (protocol == "tcp" and (port is None or port in ports_used))
        ):
            acceptable = (acceptable - {PUBLISHED}) | {SKIPPED}
        actual = (
            PUBLISHED
            if service.name in published
            else SKIPPED
            if service.name in skipped
            else IGNORED
        )
        assert actual in acceptable, (
            f"service {service.name!r} with tags {service.tags!r}: {actual}, "
            f"expected {' or '.join(sorted(acceptable))}"
        )
        if actual != PUBLISHED:
            continue
        b = published[service.name]
        assert b.name == f"{service.name}.{DOMAIN}"
        assert b.protocol == protocol
        assert b.balance == options.get("BACKEND.BALANCE", "roundrobin")
        maxconn = options.get("BACKEND.MAXCONN")
        assert b.maxconn == (int(maxconn) if maxconn else None)
        assert b.frontend_port == (port if protocol == "tcp" else None)
        if port is not None:
            ports_used.add(port)
        check_servers(service.instances, b.servers)


def check_servers(instances: Sequence[Instance], servers: Sequence[model.Server]) -> None:
    valid_port = [i for i in instances if 1 <= i.port <= 65535]
    required = Counter(
        (i.address, i.port) for i in valid_port if address_class(i.address) == "good"
    )
    allowed = required + Counter(
        (i.address, i.port) for i in valid_port if address_class(i.address) == "edge"
    )
    actual = Counter((s.address, s.port) for s in servers)
    assert not required - actual, f"instances left out: {required - actual}"
    assert not actual - allowed, f"servers the input was not entitled to: {actual - allowed}"
    names = [s.name for s in servers]
    assert len(names) == len(set(names)), f"duplicate server names {names}"
    assert all(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", n, re.ASCII) for n in names), names
    # A clean, unique service ID is the server's name (stable across renders).
    ids = Counter(i.service_id for i in instances)
    by_name = {s.name: s for s in servers}
    for inst in instances:
        clean = re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", inst.service_id, re.ASCII)
        if clean and ids[inst.service_id] == 1 and (inst.address, inst.port) in actual:
            server = by_name.get(inst.service_id)
            assert server is not None and (server.address, server.port) == (
                inst.address,
                inst.port,
            ), f"instance {inst.service_id!r} not named after its ID"


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


def expected_dynamic_sections(lb: model.LoadBalancer) -> list[Expected]:
    """The model's frontends and backends as the template's value-carrying lines."""
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
        lines = [f"mode {b.protocol}", f"balance {b.balance}", "option tcp-check"]
        maxconn = f" maxconn {b.maxconn}" if b.maxconn is not None else ""
        lines.append(f"default-server inter 10s fall 1 init-addr last,libc,none{maxconn}")
        http_only = [
            "option forwardfor",
            "http-request set-header X-Forwarded-Port %[dst_port]",
            "http-request add-header X-Forwarded-Proto https if { ssl_fc }",
        ]
        lines += http_only if http else []
        for s in b.servers:
            address = f"ipv6@{s.address}" if ":" in s.address else s.address
            lines.append(f"server {s.name} {address}:{s.port} check")
        out.append(Expected(f"backend {b.name}", lines, () if http else tuple(http_only)))
    return [
        Expected(e.header, [f"    {v}" for v in e.values], tuple(f"    {f}" for f in e.forbidden))
        for e in out
    ]


def template_literals(header: str) -> set[str]:
    """Lines of the template's loop that renders ``header``'s kind of section and that
    hold no Jinja2 at all: static directives and comments, the same for every input.
    Read from the template in use, so that a new static directive there (another
    engineer's ``option tcplog``) does not break this test, while anything that
    depends on the input still has to be one of the value lines above."""
    source = ENV.loader.get_source(ENV, HAPROXY_TEMPLATE)[0] if ENV.loader else ""
    attr = "tcp_backends" if header == "frontend" else "backends"
    loop = f"{{% for b in lb.{attr} %}}"
    lines = source.split("\n")
    begin = next(i for i, ln in enumerate(lines) if ln.strip() == loop)
    literals: set[str] = set()
    depth = 0
    for line in lines[begin + 1 :]:
        stripped = line.strip()
        if stripped.startswith("{% for"):
            depth += 1
        elif stripped == "{% endfor %}":
            if depth == 0:
                break
            depth -= 1
        elif "{{" not in line and "{%" not in line and "{#" not in line:
            literals.add(line)
    return literals


TEMPLATE_LITERALS = {
    "frontend": template_literals("frontend"),
    "backend": template_literals("backend"),
}


def check_dynamic_sections(sections: list[tuple[str, list[str]]], lb: model.LoadBalancer) -> None:
    expected = expected_dynamic_sections(lb)
    assert [h for h, _ in sections] == [e.header for e in expected], "sections differ from model"
    for (header, body), want in zip(sections, expected, strict=True):
        literals = TEMPLATE_LITERALS[header.split()[0]]
        values = Counter(want.values)
        extra = [ln for ln in body if ln not in values and ln not in literals]
        assert not extra, f"{header}: lines the input was not entitled to: {extra}"
        assert Counter(ln for ln in body if ln in values) == values, f"{header}: {body}"
        servers = [ln for ln in body if ln.startswith("    server ")]
        assert servers == [v for v in want.values if v.startswith("    server ")], header
        assert not set(body) & set(want.forbidden), f"{header}: http directives in tcp mode"


def printable_ascii(text: str) -> bool:
    return re.fullmatch(r"[ -~\n]*", text) is not None


def check_output(
    specs: Sequence[ServiceSpec],
    lb: model.LoadBalancer,
    files: HaproxyFiles,
    fixed: list[tuple[str, list[str]]],
) -> None:
    config, hosts = files.config, files.hosts_map
    assert printable_ascii(config) and printable_ascii(hosts)
    assert MARK not in config and MARK not in hosts
    for text in hostile_strings(specs):
        assert text not in config and text not in hosts, f"hostile {text!r} in the output"
    preamble, sections = parse_sections(config)
    assert preamble == [
        "# haproxy.cfg rendered by consul-lb from the Consul catalog.",
        "# Do not edit: it is rewritten on every catalog change.",
        f"# Published: {len(lb.backends)} service(s); skipped: {len(lb.skipped)}.",
        "",
    ]
    assert sections[: len(fixed)] == fixed, "the fixed sections changed with the catalog"
    check_dynamic_sections(sections[len(fixed) :], lb)
    assert hosts == "".join(
        f"{b.name} {b.name}\n" for b in sorted(lb.http_backends, key=lambda b: b.name)
    )
    for b in lb.backends:
        assert re.fullmatch(rf"[a-z0-9-]{{1,63}}\.{re.escape(DOMAIN)}", b.name, re.ASCII)


def hostile_strings(specs: Sequence[ServiceSpec]) -> Iterator[str]:
    for name, tags, instances in specs:
        yield from (text for text in (name, *tags) if MARK in text)
        for inst in instances:
            yield from (text for text in inst[:3] if MARK in text)


def check_log_lines(lb: model.LoadBalancer, problems: Sequence[str]) -> None:
    """Skips and left-out instances are logged as one line each (haproxy_mode's format):
    hostile names and tags must not break a line or carry control characters."""
    for s in lb.skipped:
        line = f"skipping service {s.service!r}: {s.reason}"
        assert line.isprintable(), line
    for p in problems:
        assert f"leaving out {p}".isprintable(), p


# ---------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def checker() -> Iterator[HaproxyChecker]:
    ref = image_names().ref("haproxy")
    require_images(images.client(), ref)
    with HaproxyChecker(ref) as c:
        yield c


def render(catalog: Catalog, limits: Limits) -> tuple[model.LoadBalancer, list[str], HaproxyFiles]:
    lb, problems = model.build(catalog, SETTINGS)
    return lb, problems, render_haproxy(lb, SETTINGS, limits, PATHS, env=ENV)


INJECTED_TAGS: list[ServiceSpec] = [
    ("evil", ["HAPROXY.ENABLE=true", f"HAPROXY.BACKEND.BALANCE=roundrobin\n    {MARK}"], []),
    ("www", ["HAPROXY.ENABLE=true"], [("n1", "www-1", "10.0.0.1", 80)]),
]
# Found by this test: "a..b" passes the host-name pattern (runtime/consul_lb/model/__init__.py,
# HOSTNAME) but HAProxy refuses it ("Can't create DNS resolution for server"), so one
# instance registered with such an address makes every later configuration fail
# haproxy -c, and the load balancer stops following Consul for all services.
EMPTY_LABEL_ADDRESS: list[ServiceSpec] = [
    ("www", ["HAPROXY.ENABLE=true"], [("n1", "www-1", "10.0.0.1", 80), ("n1", "www-2", "a..b", 80)])
]
PORT_CLASH: list[ServiceSpec] = [
    (n, ["HAPROXY.ENABLE=true", "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9000"], [])
    for n in ("a", "b")
]


def test_hostile_catalogs_render_entitled_configs_that_haproxy_accepts(
    checker: HaproxyChecker,
) -> None:
    # The image's own open-file limit: the global maxconn is fitted to it at run time.
    limits = fit(SETTINGS.maxconn_global, SETTINGS.maxconn, nofile=checker.nofile)
    _, fixed = parse_sections(render(Catalog(), limits)[2].config)
    assert [head for head, _ in fixed] == [
        "global",
        "defaults",
        "frontend stats",
        "frontend http",
        "backend consul_lb_health",
        "backend consul_lb_stats",
        "backend consul_lb_runtime",
    ]
    submitted: list[tuple[Catalog, str, Future[CheckResult]]] = []
    totals: Counter[str] = Counter()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # no .hypothesis directory in a tree shared with others
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(catalogs())
    @example(INJECTED_TAGS)
    @example(PORT_CLASH)
    @example(EMPTY_LABEL_ADDRESS)
    def run(specs: list[ServiceSpec]) -> None:
        catalog = to_catalog(specs)
        lb, problems, files = render(catalog, limits)
        check_entitlement(catalog, lb)
        check_output(specs, lb, files, fixed)
        check_log_lines(lb, problems)
        totals["backends"] += len(lb.backends)
        totals["servers"] += sum(len(b.servers) for b in lb.backends)
        totals["skipped"] += len(lb.skipped)
        totals["left out"] += len(problems)
        lines = [s.reason for s in lb.skipped] + problems
        totals["longest log line"] = max([totals["longest log line"], *map(len, lines)])
        submitted.append((catalog, files.config, checker.submit(files.files())))

    run()
    generated = time.monotonic() - started
    results = [
        (catalog, config, future.result(timeout=120)) for catalog, config, future in submitted
    ]
    invalid = [(catalog, config, r) for catalog, config, r in results if not r.ok]
    warnings = Counter(re.sub(r"^.*?: config : ", "", w) for *_, r in results for w in r.warnings)
    distinct = len({hashlib.sha256(config.encode()).digest() for _, config, _ in results})
    print(
        f"\nhaproxy -c ({checker.version}) on {len(results)} rendered configs "
        f"({distinct} distinct): {len(invalid)} invalid; generated and checked in "
        f"{generated:.1f}s + {time.monotonic() - started - generated:.1f}s; {dict(totals)}"
    )
    for text, n in warnings.most_common(10):
        print(f"  haproxy warning x{n}: {text}")
    assert len(results) >= EXAMPLES
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

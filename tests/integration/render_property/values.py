"""Strategies for service names and valid tag values, and the hostile strings (each
carrying the marker) mixed into them.

Strategies draw whole strings from alphabets (one draw each) rather than with
from_regex (one draw per character): generation, not haproxy -c, was the slow part."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import strategies as st

from tests.integration.render_property.scenario import DOMAIN, MARK

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

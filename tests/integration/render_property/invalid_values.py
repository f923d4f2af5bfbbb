"""Tag values the README refuses (hostile or malformed), values it leaves open to more
than one reading, and keys that are not tags."""

from __future__ import annotations

from tests.integration.render_property.scenario import DOMAIN
from tests.integration.render_property.values import (
    GROUP_INJECTIONS,
    LONG_HOST,
    MANY_HOSTS,
    MANY_NETWORKS,
    PATH_INJECTIONS,
)

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

"""HAPROXY.* service tags -> ServiceOptions: defaults, overrides, and everything refused."""

from __future__ import annotations

import pytest
from consul_lb.model.tags import BALANCE_SIMPLE, TAGS, ServiceOptions, TagError, parse_tags

ON = "HAPROXY.ENABLE=true"

# The tag table of ARCHITECTURE.md (plus the FRONTEND.PORT this project added).
DEFAULTS = {
    "ENABLE": False,
    "PROTOCOL": "http",
    "BACKEND.BALANCE": "roundrobin",
    "BACKEND.MAXCONN": None,
    "FRONTEND.PORT": None,
    "FRONTEND.HOSTS": (),
    "FRONTEND.PATH": None,
    "BACKEND.STRIP_PATH": False,
    "BACKEND.STICKY": False,
    "BACKEND.HEALTHCHECK.PATH": None,
    "GROUP": "external",
    "FRONTEND.ALLOW": (),
    # issue 12 (TLS at the edge)
    "FRONTEND.REDIRECT_HTTPS": False,
    "FRONTEND.HSTS": None,
    "BACKEND.TLS": False,
    # issue 13 (ACME)
    "FRONTEND.ACME": False,
}
# tag key -> (tags that set it, the value it gives, invalid values). FRONTEND.PORT needs
# a tcp service, so its cases bring HAPROXY.PROTOCOL=tcp along.
CASES: dict[str, tuple[tuple[str, ...], object, tuple[str, ...]]] = {
    "ENABLE": ((ON,), True, ("yes", "1", "", "tru", "true ", "true\n")),
    "PROTOCOL": (("HAPROXY.PROTOCOL=tcp",), "tcp", ("udp", "HTTP", "http ", "")),
    "BACKEND.BALANCE": (("HAPROXY.BACKEND.BALANCE=leastconn",), "leastconn", ("rr", "")),
    "BACKEND.MAXCONN": (
        ("HAPROXY.BACKEND.MAXCONN=250",),
        250,
        ("0", "-1", "1000001", "ten", "25.0", "1e3", ""),
    ),
    "FRONTEND.PORT": (
        ("HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"),
        5432,
        ("0", "65536", "99999", "-80", "80a", ""),
    ),
    "FRONTEND.HOSTS": (
        ("HAPROXY.FRONTEND.HOSTS=Shop.Example.org,*.example.net,shop.example.org",),
        ("*.example.net", "shop.example.org"),
        (
            "",
            "localhost",
            "a b.com",
            "*.com",
            "**.example.com",
            "ex_ample.com",
            "example.com\nlisten x",
            "a..b.com",
            "example.com#x",
            ",".join(f"h{i}.example.com" for i in range(33)),
        ),
    ),
    "FRONTEND.PATH": (
        ("HAPROXY.FRONTEND.PATH=/api/v2",),
        "/api/v2",
        ("", "/", "api", "/api/", "/a b", "/a%20b", "/a?b", "/a#b", "/a\nb", "/" + "a" * 200),
    ),
    "BACKEND.STRIP_PATH": (
        ("HAPROXY.FRONTEND.PATH=/api", "HAPROXY.BACKEND.STRIP_PATH=true"),
        True,
        ("yes", "1", ""),
    ),
    "BACKEND.STICKY": (("HAPROXY.BACKEND.STICKY=true",), True, ("on", "")),
    "BACKEND.HEALTHCHECK.PATH": (
        ("HAPROXY.BACKEND.HEALTHCHECK.PATH=/healthz",),
        "/healthz",
        ("", "healthz", "/health check", "/h\r\nHost: x"),
    ),
    "GROUP": (("HAPROXY.GROUP=internal",), "internal", ("", "Internal", "a b", "-x", "*")),
    "FRONTEND.ALLOW": (
        ("HAPROXY.FRONTEND.ALLOW=10.0.0.0/8,192.168.1.7,2001:db8::/32",),
        ("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"),
        ("", "10.0.0.0/33", "any", "10.0.0.1 10.0.0.2", "fe80::1%eth0", "10.0.0.0/8\n"),
    ),
    "FRONTEND.REDIRECT_HTTPS": (
        ("HAPROXY.FRONTEND.REDIRECT_HTTPS=true",),
        True,
        ("yes", "1", "on", "", "true\nfrontend x"),
    ),
    "FRONTEND.HSTS": (
        ("HAPROXY.FRONTEND.HSTS=31536000",),
        31536000,
        ("-1", "1y", "31536000; includeSubDomains", "315360001", "1e6", "", '"3600"'),
    ),
    "BACKEND.TLS": (("HAPROXY.BACKEND.TLS=true",), True, ("yes", "ssl", "", "true ")),
    "FRONTEND.ACME": (
        ("HAPROXY.FRONTEND.ACME=true",),
        True,
        ("yes", "1", "letsencrypt", "", "true ", "true\nfrontend x"),
    ),
}


def field_of(key: str) -> str:
    return TAGS[key][0]


def test_every_tag_is_covered() -> None:
    assert set(DEFAULTS) == set(TAGS) == set(CASES)


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_default(key: str) -> None:
    assert getattr(parse_tags([]), field_of(key)) == DEFAULTS[key]


@pytest.mark.parametrize("key", sorted(CASES))
def test_override(key: str) -> None:
    tags, expected, _ = CASES[key]
    assert getattr(parse_tags(tags), field_of(key)) == expected


@pytest.mark.parametrize(
    ("key", "raw"), [(key, raw) for key, (_, _, bad) in sorted(CASES.items()) for raw in bad]
)
def test_invalid_value_names_the_tag(key: str, raw: str) -> None:
    tags = {
        "FRONTEND.PORT": ["HAPROXY.PROTOCOL=tcp"],
        "BACKEND.STRIP_PATH": ["HAPROXY.FRONTEND.PATH=/api"],
    }.get(key, [])
    with pytest.raises(TagError) as caught:
        parse_tags([*tags, f"HAPROXY.{key}={raw}"])
    message = str(caught.value)
    assert f"HAPROXY.{key}=" in message
    assert "\n" not in message  # one log line, whatever the tag held


def test_enable_is_case_insensitive_and_false_is_not_published() -> None:
    assert parse_tags(["HAPROXY.ENABLE=TRUE"]).enabled is True
    assert parse_tags(["HAPROXY.ENABLE=False"]).enabled is False


def test_full_http_service() -> None:
    options = parse_tags(
        [ON, "HAPROXY.PROTOCOL=http", "HAPROXY.BACKEND.BALANCE=source", "HAPROXY.BACKEND.MAXCONN=9"]
    )
    assert options == ServiceOptions(True, "http", "source", 9, None)


@pytest.mark.parametrize(
    "algorithm",
    [
        *BALANCE_SIMPLE,
        "hdr(Host)",
        "hdr(x-user_id)",
        "rdp-cookie(mstshash)",
        "url_param userid",
    ],
)
def test_balance_accepted(algorithm: str) -> None:
    assert parse_tags([f"HAPROXY.BACKEND.BALANCE={algorithm}"]).balance == algorithm


def test_balance_simple_list_is_haproxys() -> None:
    assert set(BALANCE_SIMPLE) >= {"roundrobin", "static-rr", "leastconn", "first", "source"}


@pytest.mark.parametrize(
    "algorithm",
    [
        "RoundRobin",
        "round robin",
        "roundrobin\n",
        "hdr(host)\n",
        "hdr(host)\n    server evil 10.0.0.1:80",
        "url_param id\n",
        "hdr()",
        "hdr(host name)",
        "hdr(host",
        "url_param",
        "url_param a b",
        "uri whole",
        "random(2)",
        "hash path",
        "roundrobin#",
        "'roundrobin'",
        "hdr(" + "a" * 65 + ")",
    ],
)
def test_balance_rejected(algorithm: str) -> None:
    with pytest.raises(TagError, match=r"HAPROXY\.BACKEND\.BALANCE"):
        parse_tags([ON, f"HAPROXY.BACKEND.BALANCE={algorithm}"])


@pytest.mark.parametrize(
    "tag",
    ["HAPROXY.BACKEND.WEIGHT=3", "HAPROXY.enable=true", "HAPROXY.=x", "HAPROXY.FRONTEND=80"],
)
def test_unknown_tag(tag: str) -> None:
    with pytest.raises(TagError, match="unknown tag"):
        parse_tags([ON, tag])


@pytest.mark.parametrize("tag", ["HAPROXY.ENABLE", "HAPROXY.", "HAPROXY.BACKEND.MAXCONN"])
def test_tag_without_value(tag: str) -> None:
    with pytest.raises(TagError, match="has no '=value'"):
        parse_tags([tag])


@pytest.mark.parametrize(
    "tags",
    [
        [ON, "HAPROXY.ENABLE=false"],
        [ON, "HAPROXY.ENABLE=TRUE"],
        ["HAPROXY.PROTOCOL=http", "HAPROXY.PROTOCOL=tcp"],
        ["HAPROXY.BACKEND.BALANCE=first", "HAPROXY.BACKEND.BALANCE=leastconn"],
        ["HAPROXY.BACKEND.MAXCONN=10", "HAPROXY.BACKEND.MAXCONN=010"],
    ],
)
def test_conflicting_duplicates(tags: list[str]) -> None:
    with pytest.raises(TagError, match="conflicting tags"):
        parse_tags(tags)
    with pytest.raises(TagError, match="conflicting tags"):
        parse_tags(list(reversed(tags)))


def test_identical_duplicates_are_accepted() -> None:
    tags = [ON, ON, "HAPROXY.BACKEND.MAXCONN=5", "HAPROXY.BACKEND.MAXCONN=5"]
    assert parse_tags(tags) == ServiceOptions(enabled=True, maxconn=5)


@pytest.mark.parametrize(
    "tag",
    [
        "traefik.enable=true",
        "haproxy.enable=maybe",
        "HAPROXY",
        "XHAPROXY.ENABLE=true",
        "version=1.2 3",
        "HAPROXYENABLE=true",
    ],
)
def test_other_tags_are_ignored(tag: str) -> None:
    assert parse_tags([ON, tag]) == ServiceOptions(enabled=True)


@pytest.mark.parametrize(
    "value",
    [
        "true ",
        " true",
        "tr ue",
        "true\n",
        "true\nfrontend evil",
        "true\r",
        "true\t",
        "true#",
        "true # comment",
        '"true"',
        "'true'",
        "true\\",
        "\\ntrue",
    ],
)
@pytest.mark.parametrize("key", ["ENABLE", "PROTOCOL", "BACKEND.BALANCE", "BACKEND.MAXCONN"])
def test_hostile_values_rejected(key: str, value: str) -> None:
    good = {"ENABLE": "true", "PROTOCOL": "tcp", "BACKEND.BALANCE": "first"}
    raw = value.replace("true", good.get(key, "12"))
    with pytest.raises(TagError) as caught:
        parse_tags([f"HAPROXY.{key}={raw}"])
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)


def test_long_hostile_tag_is_shortened_in_the_message() -> None:
    with pytest.raises(TagError) as caught:
        parse_tags(["HAPROXY.BACKEND.BALANCE=" + "x" * 5000])
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize(("port", "ok"), [("1", True), ("65535", True), ("0", False)])
def test_frontend_port_range(port: str, ok: bool) -> None:
    tags = ["HAPROXY.PROTOCOL=tcp", f"HAPROXY.FRONTEND.PORT={port}"]
    if ok:
        assert parse_tags(tags).frontend_port == int(port)
    else:
        with pytest.raises(TagError, match=r"1\.\.65535"):
            parse_tags(tags)


@pytest.mark.parametrize("protocol", [[], ["HAPROXY.PROTOCOL=http"]])
def test_frontend_port_on_http_service_rejected(protocol: list[str]) -> None:
    with pytest.raises(TagError, match=r"HAPROXY\.FRONTEND\.PORT applies to tcp services"):
        parse_tags([ON, *protocol, "HAPROXY.FRONTEND.PORT=9000"])


def test_tcp_service_without_port_parses() -> None:
    # The model skips it (it cannot be routed); the tags themselves are fine.
    assert parse_tags([ON, "HAPROXY.PROTOCOL=tcp"]).frontend_port is None


def test_input_order_does_not_matter() -> None:
    tags = [ON, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=6379", "team=cache"]
    assert parse_tags(tags) == parse_tags(reversed(tags))


@pytest.mark.parametrize(
    "tag",
    [
        "HAPROXY.FRONTEND.HOSTS=a.example.com",
        "HAPROXY.FRONTEND.PATH=/api",
        "HAPROXY.BACKEND.STICKY=true",
        "HAPROXY.BACKEND.HEALTHCHECK.PATH=/h",
    ],
)
def test_http_routing_tags_are_refused_for_tcp(tag: str) -> None:
    tcp = ["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"]
    with pytest.raises(TagError, match="need\\(s\\) HTTP"):
        parse_tags([*tcp, tag])


def test_strip_path_needs_a_path() -> None:
    with pytest.raises(TagError, match=r"needs HAPROXY\.FRONTEND\.PATH"):
        parse_tags(["HAPROXY.BACKEND.STRIP_PATH=true"])


def test_allow_applies_to_tcp_services_too() -> None:
    tcp = [
        "HAPROXY.PROTOCOL=tcp",
        "HAPROXY.FRONTEND.PORT=5432",
        "HAPROXY.FRONTEND.ALLOW=10.0.0.0/8",
    ]
    assert parse_tags(tcp).allow == ("10.0.0.0/8",)


def test_acme_applies_to_http_services_only() -> None:
    # HTTP-01 is answered on the http frontend for the hosts of an http service.
    tcp = ["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=5432"]
    with pytest.raises(TagError, match=r"HAPROXY\.FRONTEND\.ACME applies to http services"):
        parse_tags([*tcp, "HAPROXY.FRONTEND.ACME=true"])
    assert parse_tags([*tcp, "HAPROXY.FRONTEND.ACME=false"]).acme is False

"""Explicit examples, run before hypothesis generates its own: injected tags, port and
route clashes, a rolling deploy, no passing instance, routes, weights, arguable values."""

from __future__ import annotations

import dataclasses

from consul_lb.consul.catalog import CRITICAL, PASSING, WARNING, Instance

from tests.integration.render_property.scenario import DOMAIN, ENABLE, MARK, Scenario
from tests.integration.render_property.values import MANY_HOSTS, MANY_NETWORKS


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

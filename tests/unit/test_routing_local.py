"""Routing features against a real HAProxy on loopback: aliases, wildcards and paths
through the maps (changed without reload), weights, sticky cookies and HTTP checks for
servers added through the runtime API."""

from __future__ import annotations

import dataclasses
import http.client
from collections import Counter

from consul_lb.consul.catalog import Catalog, Instance

from tests.unit.local_haproxy import ON, Stack


def tagged(
    stack: Stack, service_id: str, *tags: str, backend: str | None = None, **kw: object
) -> Instance:
    return stack.instance(service_id, backend=backend, tags=(ON, *tags), **kw)  # type: ignore[arg-type]


def catalog(**services: list[Instance]) -> Catalog:
    return Catalog.build(
        {n: sorted({t for i in v for t in i.tags}) for n, v in services.items()}, services
    )


def get(stack: Stack, host: str, path: str = "/", cookie: str = "") -> tuple[int, str, str]:
    """(status, body, Set-Cookie)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.settings.http_port, timeout=5)
    try:
        headers = {"Host": host, "Connection": "close", **({"Cookie": cookie} if cookie else {})}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("Set-Cookie") or ""
    finally:
        conn.close()


def test_aliases_wildcards_and_paths_route_and_change_without_reload(stack: Stack) -> None:
    www = tagged(stack, "www-1")
    api = tagged(
        stack, "api-1", "HAPROXY.FRONTEND.PATH=/api", "HAPROXY.FRONTEND.HOSTS=shop.example.org"
    )
    assert stack.applier.apply(catalog(www=[www], api=[api])) == "reload"
    assert get(stack, "api.example.com", "/api/x")[:2] == (200, "api-1")
    assert get(stack, "api.example.com", "/apix")[0] == 503  # a prefix of path segments
    assert get(stack, "shop.example.org", "/api")[:2] == (200, "api-1")
    assert get(stack, "shop.example.org", "/")[0] == 503  # nothing takes the rest there
    # Aliases (an exact one and a wildcard) come, without a reload.
    www2 = dataclasses.replace(
        www, tags=tuple(sorted((ON, "HAPROXY.FRONTEND.HOSTS=shop.example.org,*.example.net")))
    )
    assert stack.applier.apply(catalog(www=[www2], api=[api])) == "runtime_api"
    assert get(stack, "shop.example.org", "/")[:2] == (200, "www-1")
    assert get(stack, "shop.example.org", "/api/v1")[:2] == (200, "api-1")  # the longer prefix
    assert get(stack, "a.b.example.net", "/")[:2] == (200, "www-1")
    assert get(stack, "a.b.example.net.", "/")[:2] == (200, "www-1")
    # A longer path on the same site, then aliases gone, still without a reload.
    v2 = tagged(
        stack, "v2-1", "HAPROXY.FRONTEND.PATH=/api/v2", "HAPROXY.FRONTEND.HOSTS=shop.example.org"
    )
    assert stack.applier.apply(catalog(www=[www2], api=[api], v2=[v2])) == "reload"  # a new service
    assert get(stack, "shop.example.org", "/api/v2/x")[:2] == (200, "v2-1")
    assert get(stack, "shop.example.org", "/api/v3")[:2] == (200, "api-1")
    assert stack.applier.apply(catalog(www=[www], api=[api], v2=[v2])) == "runtime_api"
    assert get(stack, "a.b.example.net", "/")[0] == 503
    assert stack.applier.counters.reloads == 1


def test_strip_path_removes_the_prefix(stack: Stack) -> None:
    echo = stack.backend("echo-1")
    echo.echo_path = True
    api = tagged(stack, "echo-1", "HAPROXY.FRONTEND.PATH=/v1.0", "HAPROXY.BACKEND.STRIP_PATH=true")
    stack.applier.apply(catalog(api=[api]))
    assert get(stack, "api.example.com", "/v1.0/users?x=1")[1] == "echo-1 /users?x=1"
    assert get(stack, "api.example.com", "/v1.0")[1] == "echo-1 /"


def test_weights_split_traffic_and_change_live(stack: Stack) -> None:
    heavy = tagged(stack, "heavy", weight_passing=10)
    light = tagged(stack, "light")
    stack.applier.apply(catalog(web=[heavy, light]))
    counts = Counter(get(stack, "web.example.com")[1] for _ in range(110))
    assert counts == {"heavy": 100, "light": 10}  # roundrobin honours weights exactly
    even = dataclasses.replace(heavy, weight_passing=1)
    assert stack.applier.apply(catalog(web=[even, light])) == "runtime_api"
    counts = Counter(get(stack, "web.example.com")[1] for _ in range(20))
    assert counts == {"heavy": 10, "light": 10}


def test_sticky_cookies_hold_for_servers_added_live(stack: Stack) -> None:
    a = tagged(stack, "a", "HAPROXY.BACKEND.STICKY=true")
    stack.applier.apply(catalog(web=[a]))
    b = tagged(stack, "b", "HAPROXY.BACKEND.STICKY=true")
    assert stack.applier.apply(catalog(web=[a, b])) == "runtime_api"
    seen: dict[str, str] = {}
    for _ in range(4):
        _status, body, cookie = get(stack, "web.example.com")
        seen[body] = cookie.split(";")[0]
    assert set(seen) == {"a", "b"} and all(seen.values())  # both got a dynamic cookie
    for name, cookie in seen.items():
        assert {get(stack, "web.example.com", cookie=cookie)[1] for _ in range(10)} == {name}


def test_an_http_check_takes_out_a_server_added_live(stack: Stack) -> None:
    good = tagged(stack, "good", "HAPROXY.BACKEND.HEALTHCHECK.PATH=/health")
    stack.applier.apply(catalog(web=[good]))
    sick = tagged(stack, "sick", "HAPROXY.BACKEND.HEALTHCHECK.PATH=/health")
    stack.backend("sick").failing_paths = {"/health"}  # its port answers, its check fails
    assert stack.applier.apply(catalog(web=[good, sick])) == "runtime_api"

    def sick_down() -> bool:
        row = stack.servers()[("web.example.com", "sick")]
        return row["srv_op_state"] == "0"  # stopped (HAProxy's SRV_ST_STOPPED)

    import time

    deadline = time.monotonic() + 20
    while not sick_down() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sick_down()
    assert {get(stack, "web.example.com")[1] for _ in range(6)} == {"good"}

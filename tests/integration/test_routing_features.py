"""Routing and traffic management against the image and a real Consul: long-lived
WebSockets, host aliases and paths, Consul weights and warning instances, sticky
sessions across reloads and load balancers, HTTP checks, groups, allow lists, stats
authentication."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import requests
from websockets.asyncio.client import connect

from tests.integration.conftest import DOMAIN, Stack, wait_until

ENABLE = "HAPROXY.ENABLE=true"
SYN = "syn.local"  # the second load balancer's domain


def syn(stack: Stack, host: str, path: str = "/", **kw: object) -> requests.Response:
    url = f"http://127.0.0.1:{stack.port('netns', 8080)}{path}"
    return requests.get(url, headers={"Host": host}, timeout=5, **kw)  # type: ignore[arg-type]


def test_an_idle_websocket_survives_45_seconds(stack: Stack) -> None:
    stack.register("ws-1", "ws", "ws", [ENABLE])
    host = f"ws.{DOMAIN}"
    wait_until(lambda: stack.get(host).status_code in (400, 426), what="the websocket service")

    async def exchange() -> tuple[str, str]:
        # The URL names the service (the Host header); the connection goes to HAProxy.
        port = int(stack.http.rsplit(":", 1)[1])
        url = f"ws://{host}:{port}/"
        async with connect(url, host="127.0.0.1", port=port, ping_interval=None) as ws:
            await ws.send("hello")
            first = str(await ws.recv())
            await asyncio.sleep(45)  # idle: longer than timeout client/server (30s)
            await ws.send("still there?")
            second = str(await asyncio.wait_for(ws.recv(), 10))
            return first, second

    assert asyncio.run(exchange()) == ("ws-1: hello", "ws-1: still there?")


def test_aliases_and_paths_route_and_aliases_change_without_reload(stack: Stack) -> None:
    stack.register(
        "site-1", "site", "web-1", [ENABLE, "HAPROXY.FRONTEND.HOSTS=shop.example.org,*.example.net"]
    )
    stack.register(
        "cart-1",
        "cart",
        "web-2",
        [ENABLE, "HAPROXY.FRONTEND.HOSTS=shop.example.org", "HAPROXY.FRONTEND.PATH=/cart"],
    )
    stack.register(
        "pay-1",
        "pay",
        "web-3",
        [
            ENABLE,
            "HAPROXY.FRONTEND.HOSTS=shop.example.org",
            "HAPROXY.FRONTEND.PATH=/cart/pay",
            "HAPROXY.BACKEND.STRIP_PATH=true",
        ],
    )
    wait_until(lambda: stack.backend_of("shop.example.org") == "web-1", what="the alias")

    def answer(host: str, path: str) -> tuple[str | None, str | None]:
        r = stack.get(host, path)
        return (r.json()["backend"], r.json()["path"]) if r.status_code == 200 else (None, None)

    wait_until(lambda: answer("shop.example.org", "/cart/pay/now")[0] == "web-3")
    assert answer("shop.example.org", "/") == ("web-1", "/")
    assert answer("a.b.example.net", "/x") == ("web-1", "/x")  # the wildcard
    assert answer("shop.example.org", "/cart/items") == ("web-2", "/cart/items")  # no strip
    assert answer("shop.example.org", "/cart/pay/now?x=1") == ("web-3", "/now?x=1")  # stripped
    assert answer("shop.example.org", "/cartoon") == ("web-1", "/cartoon")  # not under /cart
    reloads = stack.settled("site", "cart", "pay")["reloads"]
    # An alias more, and the wildcard gone: maps changed through the runtime API.
    stack.register(
        "site-1",
        "site",
        "web-1",
        [ENABLE, "HAPROXY.FRONTEND.HOSTS=shop.example.org,www.example.org"],
    )
    wait_until(lambda: stack.backend_of("www.example.org") == "web-1", what="the new alias")
    wait_until(lambda: stack.backend_of("a.b.example.net") is None, what="the wildcard gone")
    assert stack.state()["reloads"] == reloads, stack.logs()[-3000:]


def test_consul_weights_split_traffic_and_change_without_reload(stack: Stack) -> None:
    host = f"weighted.{DOMAIN}"
    heavy = {"Weights": {"Passing": 10, "Warning": 1}}
    stack.register("weighted-1", "weighted", "web-1", [ENABLE], extra=heavy)
    stack.register("weighted-2", "weighted", "web-2", [ENABLE])
    wait_until(lambda: {stack.backend_of(host) for _ in range(12)} == {"web-1", "web-2"})
    counts = Counter(stack.backend_of(host) for _ in range(1100))
    # 10:1 within 10 %.
    assert 9.0 <= counts["web-1"] / counts["web-2"] <= 11.0, counts
    reloads = stack.settled("weighted")["reloads"]
    stack.register("weighted-1", "weighted", "web-1", [ENABLE])  # back to 1:1
    wait_until(
        lambda: abs(Counter(stack.backend_of(host) for _ in range(40))["web-1"] - 20) <= 2,
        what="the weight changed",
    )
    assert stack.state()["reloads"] == reloads


def test_warning_instances_follow_each_load_balancers_policy(stack: Stack) -> None:
    stack.register("warned-1", "warned", "web-1", [ENABLE])
    stack.register("warned-2", "warned", "web-2", [ENABLE], check={"TTL": "300s"})
    stack.ttl("warned-2", "warn")
    # The main load balancer excludes warning instances (the default)...
    wait_until(lambda: stack.backend_of(f"warned.{DOMAIN}") == "web-1")
    time.sleep(1)
    assert {stack.backend_of(f"warned.{DOMAIN}") for _ in range(8)} == {"web-1"}
    # ... the second one has HAPROXY_HEALTH_WARNING=include.
    wait_until(
        lambda: (
            {syn(stack, f"warned.{SYN}").json()["backend"] for _ in range(8)} == {"web-1", "web-2"}
        ),
        what="the warning instance published with include",
    )


def test_a_sticky_client_stays_across_a_reload_and_a_second_load_balancer(stack: Stack) -> None:
    tags = [ENABLE, "HAPROXY.BACKEND.STICKY=true", "HAPROXY.FRONTEND.HOSTS=sticky.shared.test"]
    for n in (1, 2, 3):
        stack.register(f"sticky-{n}", "sticky", f"web-{n}", tags)
    host = "sticky.shared.test"
    wait_until(lambda: {stack.backend_of(host) for _ in range(9)} == {"web-1", "web-2", "web-3"})
    session = requests.Session()
    first = session.get(stack.http, headers={"Host": host}, timeout=5)
    pinned = first.json()["backend"]
    assert session.cookies.get("consul-lb-sticky")
    assert {
        session.get(stack.http, headers={"Host": host}, timeout=5).json()["backend"]
        for _ in range(50)
    } == {pinned}
    reloads = stack.settled("sticky")["reloads"]
    stack.register("reloader-1", "reloader", "web-1", [ENABLE])  # a new service: a reload
    wait_until(lambda: stack.state()["reloads"] > reloads, what="a reload")
    assert {
        session.get(stack.http, headers={"Host": host}, timeout=5).json()["backend"]
        for _ in range(50)
    } == {pinned}
    other = f"http://127.0.0.1:{stack.port('netns', 8080)}"
    wait_until(
        lambda: requests.get(other, headers={"Host": host}, timeout=5).ok, what="the second LB"
    )
    answers = {
        session.get(other, headers={"Host": host}, timeout=5).json()["backend"] for _ in range(50)
    }
    assert answers == {pinned}


def test_an_instance_failing_its_http_check_gets_no_traffic(stack: Stack) -> None:
    host = f"checkpath.{DOMAIN}"
    tags = [ENABLE, "HAPROXY.BACKEND.HEALTHCHECK.PATH=/health"]
    stack.register("checkpath-1", "checkpath", "web-1", tags)
    stack.register("checkpath-3", "checkpath", "web-3", tags)  # /health answers 500 there
    wait_until(lambda: stack.backend_of(host) == "web-1")
    # Its TCP port answers; its check path does not: taken out by HAProxy's check.
    wait_until(
        lambda: {stack.backend_of(host) for _ in range(10)} == {"web-1"},
        timeout=40,
        what="web-3 taken out by the HTTP check",
    )


def test_groups_decide_which_load_balancer_publishes(stack: Stack) -> None:
    stack.register("secret-1", "secretsvc", "web-1", [ENABLE, "HAPROXY.GROUP=secret"])
    stack.register("inner-1", "inner", "web-2", [ENABLE, "HAPROXY.GROUP=internal"])
    # The main load balancer publishes every group (HAPROXY_GROUPS defaults to *).
    wait_until(lambda: stack.backend_of(f"secretsvc.{DOMAIN}") == "web-1")
    wait_until(lambda: syn(stack, f"inner.{SYN}").ok, what="internal on the second LB")
    assert syn(stack, f"secretsvc.{SYN}").status_code == 503
    assert "secretsvc" not in stack.state("haproxy-syndrop")["services"]


def test_allow_lists_answer_403_to_others(stack: Stack) -> None:
    stack.register("closed-1", "closed", "web-1", [ENABLE, "HAPROXY.FRONTEND.ALLOW=192.0.2.0/24"])
    stack.register("open-1", "open", "web-2", [ENABLE, "HAPROXY.FRONTEND.ALLOW=0.0.0.0/0,::/0"])
    wait_until(lambda: stack.get(f"closed.{DOMAIN}").status_code == 403, what="403 for others")
    wait_until(lambda: stack.backend_of(f"open.{DOMAIN}") == "web-2")


def test_stats_and_runtime_endpoints_ask_for_a_password_but_not_the_health_uri(
    stack: Stack,
) -> None:
    stats = f"http://127.0.0.1:{stack.port('netns', 4444)}"
    assert requests.get(f"{stats}/_haproxy_health_check", timeout=5).status_code == 200
    for path in ("/", "/_consul_lb/state", "/_haproxy_getconfig", "/metrics"):
        assert requests.get(f"{stats}{path}", timeout=5).status_code == 401, path
        ok = requests.get(f"{stats}{path}", auth=("admin", "syn-stats-secret"), timeout=5)
        assert ok.status_code == 200, path
        assert "syn-stats-secret" not in ok.text, path
    wrong = requests.get(f"{stats}/", auth=("admin", "nope-nope"), timeout=5)
    assert wrong.status_code == 401
    metrics = requests.get(f"{stats}/metrics", auth=("admin", "syn-stats-secret"), timeout=5).text
    assert "consul_lb_haproxy_exporter_up 1.0" in metrics  # the runtime reads HAProxy's half

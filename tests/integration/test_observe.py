"""Observability on the stats port: /metrics (the runtime's and HAProxy's exporter),
/_consul_lb/state, /_haproxy_getconfig, and no Consul token anywhere."""

from __future__ import annotations

import json
import uuid
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import CONSUL_TOKEN, DOMAIN, Stack, wait_until

ENABLE = "HAPROXY.ENABLE=true"
# {(sample name, labels): value}
Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]
ENDPOINTS = ("/metrics", "/metrics/runtime", "/metrics/haproxy", "/_consul_lb/state")


def unique(prefix: str) -> str:
    """A service name no other test uses (the stack is shared by the whole session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# The syn-drop load balancer's stats and runtime endpoints ask for a password.
SYN_AUTH = ("admin", "syn-stats-secret")


def metrics(base: str, path: str = "/metrics", auth: tuple[str, str] | None = None) -> Figures:
    r = requests.get(f"{base}{path}", timeout=15, auth=auth)
    r.raise_for_status()
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def one(figures: Figures, name: str, **labels: str) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def state(stack: Stack) -> dict[str, Any]:
    r = requests.get(f"{stack.stats}/_consul_lb/state", timeout=5)
    r.raise_for_status()
    assert r.headers["Content-Type"] == "application/json"
    result: dict[str, Any] = r.json()
    return result


def test_metrics_state_and_config_follow_a_registration_a_reload_and_a_bad_service(
    stack: Stack,
) -> None:
    before = metrics(stack.stats)
    strategy = state(stack)["strategy"]
    ok = {"strategy": strategy, "result": "success"}

    name, bad = unique("obs"), unique("Obs_Bad")
    host = f"{name}.{DOMAIN}"
    # A new service is a structural change: HAProxy reloads.
    stack.register(f"{name}-1", name, "web-1", [ENABLE])
    stack.register(f"{name}-2", name, "web-2", [ENABLE])
    stack.register(f"{bad}-1", bad, "web-3", [ENABLE])
    wait_until(
        lambda: {stack.backend_of(host) for _ in range(6)} == {"web-1", "web-2"},
        what=f"{host} routed to both instances",
    )

    def settled() -> tuple[Figures, dict[str, Any]] | None:
        # Gauges are compared with the state read next to them, not with "before": an
        # earlier test's deregistrations may be applied in between.
        figures, now = metrics(stack.stats), state(stack)
        skipped = {s["service"] for s in now["skipped"]}
        return (
            (figures, now)
            if name in now["services"]
            and bad in skipped
            and one(figures, "consul_lb_services_published") == len(now["services"])
            and one(figures, "consul_lb_services_skipped") == len(skipped)
            else None
        )

    after, now = wait_until(settled, what="metrics and state showing both services")
    assert one(after, "consul_lb_reloads_total", **ok) > one(
        before, "consul_lb_reloads_total", **ok
    )
    assert one(after, "consul_lb_renders_total") > one(before, "consul_lb_renders_total")
    assert one(after, "consul_lb_render_duration_seconds") > 0
    assert one(after, "consul_lb_servers_published") >= 2
    assert one(after, "consul_lb_consul_requests_total") > one(
        before, "consul_lb_consul_requests_total"
    )
    assert one(after, "consul_lb_consul_last_success_timestamp_seconds") >= one(
        before, "consul_lb_consul_last_success_timestamp_seconds"
    )
    assert one(after, "consul_lb_consul_up") == 1
    reload = {"path": "reload"}
    assert one(after, "consul_lb_changes_applied_total", **reload) > one(
        before, "consul_lb_changes_applied_total", **reload
    )
    # HAProxy's own exporter, in the same answer: the new backend and its servers.
    assert one(after, "consul_lb_haproxy_exporter_up") == 1
    assert one(after, "haproxy_process_nbthread") >= 1
    assert one(after, "haproxy_backend_active_servers", proxy=host) == 2
    # Each half alone.
    assert ("haproxy_process_nbthread", frozenset()) not in metrics(stack.stats, "/metrics/runtime")
    haproxy_only = metrics(stack.stats, "/metrics/haproxy")
    assert one(haproxy_only, "haproxy_backend_active_servers", proxy=host) == 2
    assert not any(n.startswith("consul_lb_") for n, _ in haproxy_only)

    reasons = {s["service"]: s["reason"] for s in now["skipped"]}
    assert "DNS" in reasons[bad] or "name" in reasons[bad], reasons[bad]
    assert now["last_sync"] and now["last_reload"]
    assert now["reloads"] >= 1
    assert now["consul"]["unreachable_since"] is None

    # The config endpoint is the file HAProxy reads, byte for byte.
    def same_config() -> bool:
        served = requests.get(f"{stack.stats}/_haproxy_getconfig", timeout=5)
        code, out = stack.container("haproxy").exec_run(
            ["cat", "/var/lib/consul-lb/live/haproxy.cfg"], demux=False
        )
        return served.status_code == 200 and code == 0 and served.content == out

    wait_until(same_config, what="/_haproxy_getconfig equal to the installed haproxy.cfg")
    assert f"backend {host}" in requests.get(f"{stack.stats}/_haproxy_getconfig", timeout=5).text


def test_a_failed_validation_is_counted(stack: Stack) -> None:
    # The syn-drop load balancer runs an operator template that haproxy -c rejects for
    # services balanced with "first" (tests/integration/templates-operator).
    syn_stats = f"http://127.0.0.1:{stack.port('netns', 4444)}"
    before = metrics(syn_stats, auth=SYN_AUTH)
    name = unique("obs-first")
    stack.register(f"{name}-1", name, "web-2", [ENABLE, "HAPROXY.BACKEND.BALANCE=first"])
    wait_until(
        lambda: (
            name
            in {
                s["service"]
                for s in requests.get(
                    f"{syn_stats}/_consul_lb/state", auth=SYN_AUTH, timeout=5
                ).json()["skipped"]
            }
        ),
        what="service skipped by the syn-drop load balancer",
    )
    after = metrics(syn_stats, auth=SYN_AUTH)
    assert one(after, "consul_lb_failed_validations_total") > one(
        before, "consul_lb_failed_validations_total"
    )
    assert one(after, "consul_lb_info", version=_version(after), strategy="syn-drop") == 1


def _version(figures: Figures) -> str:
    return next(dict(labels)["version"] for n, labels in figures if n == "consul_lb_info")


def test_the_consul_token_appears_in_no_log_endpoint_or_metric(stack: Stack) -> None:
    # Some activity first, so that the logs and the state have something to say.
    name = unique("obs-token")
    stack.register(f"{name}-1", name, "web-1", [ENABLE])
    wait_until(lambda: stack.backend_of(f"{name}.{DOMAIN}"), what=f"{name} routed")
    env = stack.container("haproxy").attrs["Config"]["Env"]
    assert f"CONSUL_HTTP_TOKEN={CONSUL_TOKEN}" in env  # the token is there to leak

    answers = {
        path: requests.get(f"{stack.stats}{path}", timeout=15)
        for path in (
            *ENDPOINTS,
            "/_haproxy_getconfig",
            "/",
            "/;csv",
            "/_haproxy_health_check",
            # Paths that often dump the environment elsewhere: here the stats page or 404.
            "/env",
            "/_consul_lb/env",
            "/debug/vars",
            "/metrics/runtime?env=1",
        )
    }
    for path, r in answers.items():
        assert r.status_code in (200, 404), (path, r.status_code)
        assert CONSUL_TOKEN not in r.text, path
        assert CONSUL_TOKEN not in json.dumps(dict(r.headers)), path
    assert answers["/_consul_lb/state"].status_code == 200
    assert "pxname" in answers["/;csv"].text
    assert CONSUL_TOKEN not in stack.logs("haproxy")

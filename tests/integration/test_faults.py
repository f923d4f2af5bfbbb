"""The faults of issue "one owner of HAProxy's state", against the image (HAProxy 3.0,
master-worker reloads) and a real Consul: each would take traffic down before."""

from __future__ import annotations

import time

import requests

from tests.integration.conftest import DOMAIN, Stack, image_names, run_to_exit, wait_until

ENABLE = "HAPROXY.ENABLE=true"


def answers(stack: Stack, host: str, tries: int = 8) -> set[str | None]:
    return {stack.backend_of(host) for _ in range(tries)}


def test_a_moved_instance_in_a_reloading_batch_serves_on_its_new_port(stack: Stack) -> None:
    host = f"mover.{DOMAIN}"
    # web-1 serves a second echo on port 8001 (same address: only the port moves).
    stack.container("web-1").exec_run(
        ["python3", "/srv/echo.py"],
        environment={"ECHO_PORT": "8001", "ECHO_NAME": "web-1-on-8001"},
        detach=True,
    )
    stack.register("mover-1", "mover", "web-1", [ENABLE])
    wait_until(lambda: stack.backend_of(host) == "web-1", what="mover on port 8000")
    reloads = stack.settled("mover")["reloads"]
    # One batch: the instance moves to 8001 under the same ID, and a new service comes
    # (structural: a reload).
    stack.register("mover-1", "mover", "web-1", [ENABLE], port=8001)
    stack.register("newcomer-1", "newcomer", "web-2", [ENABLE])
    wait_until(lambda: stack.backend_of(f"newcomer.{DOMAIN}") == "web-2", what="the newcomer")
    wait_until(lambda: stack.state()["reloads"] > reloads, what="a reload")
    wait_until(lambda: answers(stack, host) == {"web-1-on-8001"}, what="traffic on the new port")
    # And it stays so across the next reload (the stale port is not saved again).
    stack.register("third-1", "third", "web-3", [ENABLE])
    wait_until(lambda: stack.backend_of(f"third.{DOMAIN}") == "web-3")
    assert answers(stack, host) == {"web-1-on-8001"}


def test_a_drained_instance_that_comes_back_in_a_reload_gets_traffic(stack: Stack) -> None:
    host = f"returning.{DOMAIN}"
    stack.register("returning-1", "returning", "web-1", [ENABLE])
    stack.register("returning-2", "returning", "web-2", [ENABLE])
    wait_until(lambda: answers(stack, host) == {"web-1", "web-2"})
    stack.deregister("returning-2")  # drained through the runtime API
    wait_until(lambda: answers(stack, host) == {"web-1"})
    # Back, in the same batch as a structural change.
    stack.register("returning-2", "returning", "web-2", [ENABLE])
    stack.register("other-1", "other", "web-3", [ENABLE])
    wait_until(lambda: stack.backend_of(f"other.{DOMAIN}") == "web-3", what="the reload")
    wait_until(lambda: answers(stack, host) == {"web-1", "web-2"}, what="returning-2 serving")


def test_an_operator_template_that_raises_for_one_service_stops_nothing(stack: Stack) -> None:
    # The syn-drop load balancer runs tests/integration/templates-operator, whose
    # haproxy.cfg.j2 raises while rendering services named raises-*.
    syn_http = f"http://127.0.0.1:{stack.port('netns', 8080)}"
    stack.register("raises-1", "raises-here", "web-1", [ENABLE])
    stack.register("calm-1", "calm", "web-2", [ENABLE])
    wait_until(
        lambda: requests.get(syn_http, headers={"Host": "calm.syn.local"}, timeout=5).ok,
        what="the other service published",
    )
    skipped = {s["service"]: s["reason"] for s in stack.state("haproxy-syndrop")["skipped"]}
    assert skipped["raises-here"].startswith("the template fails for it: ")
    assert stack.container("haproxy-syndrop").status == "running"
    assert (
        requests.get(syn_http, headers={"Host": "raises-here.syn.local"}, timeout=5).status_code
        == 503
    )


def test_a_burst_of_sighup_leaves_the_runtime_working(stack: Stack) -> None:
    lb = stack.container("haproxy")
    reloads = stack.state()["reloads"]
    # PID 1 is tini, which passes each signal on to the runtime.
    result = lb.exec_run(["sh", "-c", "for i in $(seq 300); do kill -HUP 1; done"])
    assert result.exit_code == 0
    stack.register("after-hup-1", "after-hup", "web-3", [ENABLE])
    wait_until(lambda: stack.backend_of(f"after-hup.{DOMAIN}") == "web-3", what="a later change")
    lb.reload()
    assert lb.status == "running"
    state = stack.state()
    assert 1 <= state["reloads"] - reloads <= 40  # coalesced, not 300
    assert state["errors"] == {}
    assert "Traceback" not in stack.logs() and "RecursionError" not in stack.logs()


def test_an_unreadable_consul_ca_file_stops_the_start_naming_it() -> None:
    env = {
        "HAPROXY_DOM": "example.com",
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_CACERT": "/nonexistent/ca.pem",
    }
    code, logs = run_to_exit(image_names().ref("haproxy"), env)
    assert code == 2
    assert "CONSUL_CACERT: cannot read /nonexistent/ca.pem" in logs


def test_the_state_endpoint_shows_each_watch(stack: Stack) -> None:
    state = requests.get(f"{stack.stats}/_consul_lb/state", timeout=5).json()
    watches = {w["name"]: w for w in state["watches"]}
    assert set(watches) == {"services", "checks", "service fetches"}
    assert all(w["last_success"] for w in watches.values())
    assert time.time() - watches["services"]["last_success"] < 600

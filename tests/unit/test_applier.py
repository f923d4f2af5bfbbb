"""The applier against a real HAProxy on loopback: the runtime-API path, reloads, the
server-state file across a reload, isolation of bad services, rollback."""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import pytest
from consul_lb.consul.catalog import Catalog
from consul_lb.haproxy import files as haproxy_files
from consul_lb.haproxy.limits import Limits
from consul_lb.manager import applier as applier_module
from consul_lb.manager import ports
from consul_lb.manager.ports import port_free

from tests.unit.local_haproxy import Stack, catalog, make_stack, services, stop

HOST = "web.example.com"


def serve(stack: Stack, found: Catalog, expect: str) -> None:
    assert stack.applier.apply(found) == expect


def answers(stack: Stack, host: str = HOST, tries: int = 12) -> set[str]:
    return {stack.get(host)[1] for _ in range(tries)}


def test_instances_come_and_go_through_the_runtime_api(stack: Stack) -> None:
    a, b = stack.instance("web-a"), stack.instance("web-b")
    serve(stack, catalog(a), "reload")  # the first start
    assert answers(stack) == {"web-a"}
    serve(stack, catalog(a, b), "runtime_api")
    assert answers(stack) == {"web-a", "web-b"}
    serve(stack, catalog(b), "runtime_api")
    assert answers(stack) == {"web-b"}
    # The departed server drains, then is deleted once idle.
    assert ("web.example.com", "web-a") in stack.applier.api.draining
    stack.applier.sweep()
    assert ("web.example.com", "web-a") not in stack.servers()
    assert stack.applier.counters.reloads == 0  # the first start is not a reload
    assert stack.applier.counters.runtime_api_changes == 2


def test_a_moved_instance_in_a_reloading_batch_serves_on_its_new_port(stack: Stack) -> None:
    # The fault: HAProxy applied the port saved in the server-state file over the one in
    # the new configuration, and kept sending traffic to the old port.
    old = stack.instance("web-1", backend="old-port")
    serve(stack, catalog(old), "reload")
    assert answers(stack) == {"old-port"}
    moved = stack.instance("web-1", backend="new-port")
    other = stack.instance("api-1")
    # The same batch adds a service: a structural change, so a reload.
    serve(stack, services({"web": [moved], "api": [other]}), "reload")
    state = stack.servers()[("web.example.com", "web-1")]
    assert state["srv_port"] == str(stack.backend("new-port").port)
    assert answers(stack) == {"new-port"}
    # And it stays right across the next reload too.
    serve(
        stack, services({"web": [moved], "api": [other], "db": [stack.instance("db-1")]}), "reload"
    )
    assert answers(stack) == {"new-port"}


def test_a_drained_instance_that_comes_back_in_a_reload_is_ready(stack: Stack) -> None:
    a, b = stack.instance("web-a"), stack.instance("web-b")
    serve(stack, catalog(a, b), "reload")
    serve(stack, catalog(a), "runtime_api")  # web-b drains (DRAIN admin state)
    assert stack.servers()[(HOST, "web-b")]["srv_admin_state"] != "0"
    # Back, in a batch that also changes the structure: a reload.
    serve(stack, services({"web": [a, b], "api": [stack.instance("api-1")]}), "reload")
    assert stack.servers()[(HOST, "web-b")]["srv_admin_state"] == "0"
    assert answers(stack) == {"web-a", "web-b"}


def test_health_and_operator_states_of_unchanged_servers_survive_a_reload(stack: Stack) -> None:
    a, b = stack.instance("web-a"), stack.instance("web-b")
    serve(stack, catalog(a, b), "reload")
    # An operator puts one in maintenance by hand; a reload must not undo it.
    stack.applier.haproxy.admin(f"set server {HOST}/web-a state maint")
    serve(stack, services({"web": [a, b], "api": [stack.instance("api-1")]}), "reload")
    assert stack.servers()[(HOST, "web-a")]["srv_admin_state"] != "0"
    assert answers(stack) == {"web-b"}


def test_a_template_that_raises_for_one_service_leaves_out_only_that_one(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "backend.cfg.j2").write_text(
        '{% if b.service == "bad" %}{{ no_such_function() }}{% endif %}'
        '{% include "default/backend.cfg.j2" %}'
    )
    stack = make_stack(tmp_path / "state", template_dirs=(templates,))
    try:
        good, bad = stack.instance("good-1"), stack.instance("bad-1")
        outcome = stack.applier.apply(services({"good": [good], "bad": [bad]}))
        assert outcome == "reload"
        lb = stack.applier.applied
        assert lb is not None
        assert [b.service for b in lb.backends] == ["good"]
        assert "the template fails for it" in lb.skipped[0].reason
        assert stack.get("good.example.com") == (200, "good-1")
    finally:
        stop(stack)


def test_the_services_haproxy_rejects_are_found_by_bisection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    # A mistake that only shows for services balanced with "first".
    (templates / "backend.cfg.j2").write_text(
        '{% include "default/backend.cfg.j2" %}'
        '{% if b.balance == "first" %}    timeout serverr 5s\n{% endif %}'
    )
    stack = make_stack(tmp_path / "state", template_dirs=(templates,))
    checks = []
    real_check = haproxy_files.check

    def counting(*args: object, **kw: object) -> haproxy_files.Validation:
        checks.append(1)
        return real_check(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(applier_module, "check", counting)
    try:
        found = {f"s{n:02d}": [stack.instance(f"s{n:02d}-1", backend="any")] for n in range(16)}
        first = "HAPROXY.BACKEND.BALANCE=first"
        found["s05"] = [dataclasses.replace(found["s05"][0], tags=("HAPROXY.ENABLE=true", first))]
        assert stack.applier.apply(services(found)) == "reload"
        lb = stack.applier.applied
        assert lb is not None
        assert [s.service for s in lb.skipped] == ["s05"]
        assert "timeout serverr" in lb.skipped[0].reason or "serverr" in lb.skipped[0].reason
        assert len(lb.backends) == 15
        # 1 failing check, then halves: about 2 log2(16) trials, not 16, then the result.
        assert len(checks) <= 11
    finally:
        stop(stack)


def test_a_failed_reload_keeps_the_old_process_and_the_old_files(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    serve(stack, catalog(stack.instance("web-a")), "reload")
    before = stack.applier.paths.config.read_text()
    with socket.socket() as taken:
        # Taken between the probe and the reload (the probe is told it is free).
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(ports, "port_free", lambda port: True)
        tcp = ("HAPROXY.ENABLE=true", "HAPROXY.PROTOCOL=tcp", f"HAPROXY.FRONTEND.PORT={port}")
        db = stack.instance("db-1", tags=tcp)
        outcome = stack.applier.apply(services({"web": [stack.instance("web-a")], "db": [db]}))
    assert outcome == "rejected"
    assert stack.applier.counters.failed_reloads == 1
    # HAProxy's own alert says why (its stderr is read by the supervisor).
    assert any("cannot bind socket" in r.getMessage() for r in caplog.records)
    assert stack.applier.paths.config.read_text() == before
    assert answers(stack) == {"web-a"}


def test_a_port_in_time_wait_is_free() -> None:
    # The probe must not mistake TIME_WAIT for "taken" (HAProxy binds with SO_REUSEADDR).
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the side that closes first keeps TIME_WAIT on the port
        time.sleep(0.05)
        client.close()
    assert port_free(port)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        assert not port_free(busy.getsockname()[1])


def test_only_a_change_in_server_lines_alone_skips_the_reload(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Above some size HAProxy's own checks turn off (see limits.fit): the servers differ,
    # and so does every server line: that must be a reload, not runtime-API commands.
    real_fit = applier_module.fit  # type: ignore[attr-defined]

    def fit(maxconn_global: int, maxconn: int, servers: int = 0) -> Limits:
        limits = real_fit(maxconn_global, maxconn, servers=servers)
        return dataclasses.replace(limits, checks=servers < 3)

    monkeypatch.setattr(applier_module, "fit", fit)
    a, b, c = (stack.instance(f"web-{n}") for n in "abc")
    serve(stack, catalog(a, b), "reload")
    serve(stack, catalog(a, b, c), "reload")
    config = stack.applier.paths.config.read_text()
    assert "server web-c" in config and " check" not in config.split("backend web.example.com")[1]

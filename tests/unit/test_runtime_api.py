"""Classifying changes (pure), and the runtime-API commands sent for them, answered by a
real HAProxy (tests/unit/local_haproxy.py)."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from consul_lb.haproxy.runtime_api import RuntimeApi, RuntimeApiError, server_only_changes
from consul_lb.model import Backend, LoadBalancer, Server

from tests.unit.local_haproxy import Stack, catalog

A = Server("a", "10.0.0.1", 80)
B = Server("b", "10.0.0.2", 80)
C = Server("c", "10.0.0.3", 80)


def lb(*servers: Server, balance: str = "roundrobin") -> LoadBalancer:
    backend = Backend("www", "www.example.com", "http", balance, None, servers)
    return LoadBalancer((backend,), ())


def test_added_and_removed_instances_are_a_server_only_change() -> None:
    changes = server_only_changes(lb(A, B), lb(B, C))
    assert changes is not None and len(changes) == 1
    assert changes[0].added == (C,)
    assert changes[0].removed == (A,)


def test_unchanged_servers_give_no_change() -> None:
    assert server_only_changes(lb(A, B), lb(A, B)) == []


@pytest.mark.parametrize(
    "new",
    [
        lb(A, B, balance="leastconn"),  # a tag changed
        LoadBalancer((), ()),  # the service disappeared
    ],
)
def test_structural_changes_are_not_server_only(new: LoadBalancer) -> None:
    assert server_only_changes(lb(A, B), new) is None


def test_an_instance_known_by_host_name_needs_a_reload() -> None:
    # HAProxy resolves host names only when it loads its configuration.
    named = Server("n", "web-1.internal", 80)
    assert server_only_changes(lb(A), lb(A, named)) is None
    assert server_only_changes(lb(A, named), lb(A)) is not None  # removing one is fine


def test_non_dynamic_algorithms_need_a_reload() -> None:
    assert server_only_changes(lb(A, balance="source"), lb(A, B, balance="source")) is None
    assert server_only_changes(lb(A, balance="static-rr"), lb(A, B, balance="static-rr")) is None


class Recorder:
    """The real admin socket, with the commands it was sent written down."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.commands: list[str] = []
        self.sent = 0  # connections to the admin socket

    def __call__(self, command: str) -> str:
        # ";"-separated commands, sent at once, are written down one by one.
        self.commands += command.split("; ")
        self.sent += 1
        return self.stack.applier.haproxy.admin(command)


HOST = "web.example.com"


def started(stack: Stack, *names: str) -> tuple[LoadBalancer, Recorder, RuntimeApi]:
    """HAProxy running a backend with these servers; a RuntimeApi on its socket."""
    assert stack.applier.apply(catalog(*(stack.instance(n) for n in names))) == "reload"
    assert stack.applier.applied is not None
    recorder = Recorder(stack)
    return stack.applier.applied, recorder, RuntimeApi(recorder, drain_timeout=30)


def with_servers(stack: Stack, running: LoadBalancer, *names: str) -> LoadBalancer:
    (backend,) = running.backends
    servers = tuple(Server(n, "127.0.0.1", stack.backend(n).port) for n in names)
    return LoadBalancer((dataclasses.replace(backend, servers=servers),), ())


def test_an_added_server_is_created_checked_and_serves(stack: Stack) -> None:
    running, rec, api = started(stack, "a")
    new = with_servers(stack, running, "a", "c")
    changes = server_only_changes(running, new)
    assert changes is not None
    assert api.apply(changes) == (1, 0, 0)
    port = stack.backend("c").port
    assert rec.commands == [
        f"add server {HOST}/c 127.0.0.1:{port} inter 10s fall 1 check",
        f"enable health {HOST}/c",
        f"set server {HOST}/c state ready",
    ]
    assert rec.sent == 1  # on one connection
    assert stack.servers()[(HOST, "c")]["srv_admin_state"] == "0"
    assert {stack.get(HOST)[1] for _ in range(8)} == {"a", "c"}


def test_maxconn_and_ipv6_reach_the_dynamic_server(stack: Stack) -> None:
    running, rec, api = started(stack, "a")
    v6 = Server("v6", "::1", stack.backend("v6").port, maxconn=5)
    new = LoadBalancer(
        (dataclasses.replace(running.backends[0], servers=(*running.backends[0].servers, v6)),), ()
    )
    changes = server_only_changes(running, new)
    assert changes is not None
    api.apply(changes)
    assert (
        rec.commands[0]
        == f"add server {HOST}/v6 ipv6@::1:{v6.port} inter 10s fall 1 check maxconn 5"
    )
    assert stack.servers()[(HOST, "v6")]["srv_addr"] == "::1"


def test_an_instance_that_moved_is_re_addressed(stack: Stack) -> None:
    running, rec, api = started(stack, "a", "b")
    moved = dataclasses.replace(running.backends[0].servers[1], port=stack.backend("b2").port)
    new = LoadBalancer(
        (
            dataclasses.replace(
                running.backends[0], servers=(running.backends[0].servers[0], moved)
            ),
        ),
        (),
    )
    changes = server_only_changes(running, new)
    assert changes is not None and changes[0].changed == (moved,)
    api.apply(changes)
    assert rec.commands == [f"set server {HOST}/b addr 127.0.0.1 port {moved.port}"]
    assert stack.servers()[(HOST, "b")]["srv_port"] == str(moved.port)


def test_removed_server_drains_then_is_deleted_once_idle(stack: Stack) -> None:
    running, rec, api = started(stack, "a", "b")
    changes = server_only_changes(running, with_servers(stack, running, "b"))
    assert changes is not None
    assert api.apply(changes) == (0, 0, 1)
    assert rec.commands == [f"set server {HOST}/a state drain"]
    assert stack.servers()[(HOST, "a")]["srv_admin_state"] != "0"
    assert api.sweep() == 1
    assert rec.commands[-2:] == [f"set server {HOST}/a state maint", f"del server {HOST}/a"]
    assert (HOST, "a") not in stack.servers()
    assert not api.draining


def test_a_busy_server_is_deleted_only_after_the_drain_timeout(stack: Stack) -> None:
    running, rec, api = started(stack, "a", "b")
    slow = stack.backend("a")
    release = slow.hold()  # the next request to "a" stays open
    with socket.create_connection(("127.0.0.1", stack.settings.http_port)) as client:
        client.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        assert slow.held.wait(5)  # the connection reached "a" (round robin starts there)
        changes = server_only_changes(running, with_servers(stack, running, "b"))
        assert changes is not None
        api.apply(changes)
        assert api.sweep() == 0  # still has a connection: not deleted
        api.drain_timeout = 0
        api.draining[(HOST, "a")].deadline = 0
        assert api.sweep() == 1
        assert f"shutdown sessions server {HOST}/a" in rec.commands
        release.set()
    assert (HOST, "a") not in stack.servers()


def test_a_replaced_server_is_added_before_the_old_one_drains(stack: Stack) -> None:
    # One instance leaves as another arrives in the same batch: draining first would
    # leave the backend without a server for a moment (HAProxy answers 503).
    running, rec, api = started(stack, "a")
    changes = server_only_changes(running, with_servers(stack, running, "c"))
    assert changes is not None
    assert api.apply(changes) == (1, 0, 1)
    assert [c.split()[0:2] for c in rec.commands] == [
        ["add", "server"],
        ["enable", "health"],
        ["set", "server"],
        ["set", "server"],
    ]
    assert rec.commands[-1] == f"set server {HOST}/a state drain"


def test_instance_back_before_its_drain_ended_is_made_ready_again(stack: Stack) -> None:
    running, rec, api = started(stack, "a", "b")
    removed = server_only_changes(running, with_servers(stack, running, "b"))
    back = server_only_changes(with_servers(stack, running, "b"), running)
    assert removed is not None and back is not None
    api.apply(removed)
    api.apply(back)
    assert rec.commands[-1] == f"set server {HOST}/a state ready"
    assert not any(c.startswith("add server") for c in rec.commands)
    assert not api.draining
    assert stack.servers()[(HOST, "a")]["srv_admin_state"] == "0"


def test_an_error_answer_raises(stack: Stack) -> None:
    running, _, api = started(stack, "a")
    elsewhere = LoadBalancer(
        (dataclasses.replace(running.backends[0], name="nope.example.com"),), ()
    )
    changes = server_only_changes(
        elsewhere, LoadBalancer((dataclasses.replace(elsewhere.backends[0], servers=(A,)),), ())
    )
    assert changes is not None
    with pytest.raises(RuntimeApiError, match=r"nope\.example\.com"):
        api.apply(changes)


def test_a_map_follows_through_add_set_and_del(stack: Stack) -> None:
    _, _rec, api = started(stack, "a")
    path = str(stack.applier.paths.live / "hosts.map")
    old = stack.applier.paths.live.joinpath("hosts.map").read_text()
    new = old.replace(f"{HOST}. {HOST}\n", "") + f"alias.example.com {HOST}\n"
    assert api.set_map(path, old, new) == 2
    shown = stack.applier.haproxy.admin(f"show map {path}")
    assert "alias.example.com" in shown and f"{HOST}." not in shown
    assert stack.get("alias.example.com") == (200, "a")


def test_weight_and_maxconn_change_live(stack: Stack) -> None:
    running, rec, api = started(stack, "a", "b")
    (backend,) = running.backends
    heavier = dataclasses.replace(backend.servers[1], weight=10, maxconn=7)
    new = LoadBalancer((dataclasses.replace(backend, servers=(backend.servers[0], heavier)),), ())
    changes = server_only_changes(running, new)
    assert changes is not None and changes[0].changed == (heavier,)
    api.apply(changes)
    assert rec.commands == [f"set server {HOST}/b weight 10", f"set maxconn server {HOST}/b 7"]
    state = stack.servers()[(HOST, "b")]
    assert state["srv_uweight"] == "10"


def test_host_aliases_and_paths_are_not_structural() -> None:
    aliased = LoadBalancer(
        (dataclasses.replace(lb(A).backends[0], hosts=("www.example.com", "alias.example.org")),),
        (),
    )
    assert server_only_changes(lb(A), aliased) == []
    with_path = LoadBalancer((dataclasses.replace(lb(A).backends[0], path="/api"),), ())
    assert server_only_changes(lb(A), with_path) == []


def test_an_ordered_map_is_replaced_at_once_in_its_order(stack: Stack) -> None:
    _, _, api = started(stack, "a")
    path = str(stack.applier.paths.live / "paths.map")
    new = f"{HOST}/api/v2/ v2\n{HOST}/api/ v1\n"
    api.replace_map(path, new)
    shown = [
        line.split()[1:]
        for line in stack.applier.haproxy.admin(f"show map {path}").splitlines()
        if line
    ]
    assert shown == [[f"{HOST}/api/v2/", "v2"], [f"{HOST}/api/", "v1"]]

"""Classifying changes, and the runtime-API commands sent for them (fake admin socket)."""

from __future__ import annotations

import dataclasses

import pytest
from consul_lb.haproxy.runtime_api import RuntimeApi, RuntimeApiError, server_only_changes
from consul_lb.model import Backend, LoadBalancer, Server

A = Server("a", "10.0.0.1", 80)
B = Server("b", "10.0.0.2", 80)
C = Server("c", "10.0.0.3", 80)


def lb(*servers: Server, balance: str = "roundrobin", maxconn: int | None = None) -> LoadBalancer:
    backend = Backend("www", "www.example.com", "http", balance, maxconn, None, servers)
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
        lb(A, B, maxconn=10),
        LoadBalancer((), ()),  # the service disappeared
    ],
)
def test_structural_changes_are_not_server_only(new: LoadBalancer) -> None:
    assert server_only_changes(lb(A, B), new) is None


def test_an_instance_that_moved_is_re_addressed() -> None:
    admin = FakeAdmin()
    moved = dataclasses.replace(B, address="10.0.0.9", port=81)
    changes = server_only_changes(lb(A, B), lb(A, moved))
    assert changes is not None and changes[0].moved == (moved,)
    RuntimeApi(admin, drain_timeout=30).apply(changes)
    assert admin.commands == ["set server www.example.com/b addr 10.0.0.9 port 81"]


def test_an_instance_known_by_host_name_needs_a_reload() -> None:
    # HAProxy resolves host names only when it loads its configuration.
    named = Server("n", "web-1.internal", 80)
    assert server_only_changes(lb(A), lb(A, named)) is None
    assert server_only_changes(lb(A, named), lb(A)) is not None  # removing one is fine


def test_non_dynamic_algorithms_need_a_reload() -> None:
    assert server_only_changes(lb(A, balance="source"), lb(A, B, balance="source")) is None
    assert server_only_changes(lb(A, balance="static-rr"), lb(A, B, balance="static-rr")) is None


class FakeAdmin:
    """Answers like HAProxy's admin socket; records the commands."""

    def __init__(self, sessions: dict[str, int] | None = None) -> None:
        self.commands: list[str] = []
        self.sessions = sessions or {}

    def __call__(self, command: str) -> str:
        self.commands.append(command)
        if command.startswith("add server"):
            return "New server registered.\n"
        if command.startswith("set server") and " addr " in command:
            return "IP changed from '10.0.0.2' to '10.0.0.9' by 'stats socket command'\n"
        if command.startswith("del server"):
            return "Server deleted.\n"
        if command.startswith("show stat"):
            rows = "".join(f"www.example.com,{name},{n}\n" for name, n in self.sessions.items())
            return "# pxname,svname,scur\n" + rows
        return "\n"


def test_added_server_is_created_checked_and_made_ready() -> None:
    admin = FakeAdmin()
    api = RuntimeApi(admin, drain_timeout=30)
    changes = server_only_changes(lb(A), lb(A, C, maxconn=None))
    assert changes is not None
    assert api.apply(changes) == (1, 0)
    assert admin.commands == [
        "add server www.example.com/c 10.0.0.3:80 check inter 10s fall 1",
        "enable health www.example.com/c",
        "set server www.example.com/c state ready",
    ]


def test_maxconn_and_ipv6_reach_the_dynamic_server() -> None:
    admin = FakeAdmin()
    v6 = Server("v6", "fd00::1", 8080)
    changes = server_only_changes(lb(A, maxconn=5), lb(A, v6, maxconn=5))
    assert changes is not None
    RuntimeApi(admin, drain_timeout=30).apply(changes)
    assert admin.commands[0] == (
        "add server www.example.com/v6 ipv6@fd00::1:8080 check inter 10s fall 1 maxconn 5"
    )


def test_removed_server_drains_then_is_deleted_once_idle() -> None:
    admin = FakeAdmin(sessions={"a": 2})
    api = RuntimeApi(admin, drain_timeout=30)
    changes = server_only_changes(lb(A, B), lb(B))
    assert changes is not None
    assert api.apply(changes) == (0, 1)
    assert admin.commands == ["set server www.example.com/a state drain"]
    assert api.sweep() == 0  # still has connections: not deleted
    admin.sessions["a"] = 0
    assert api.sweep() == 1
    assert admin.commands[-2:] == [
        "set server www.example.com/a state maint",
        "del server www.example.com/a",
    ]
    assert not api.draining


def test_a_replaced_server_is_added_before_the_old_one_drains() -> None:
    # One instance leaves as another arrives in the same batch: draining first would
    # leave the backend without a server for a moment (HAProxy answers 503).
    admin = FakeAdmin()
    changes = server_only_changes(lb(A), lb(C))
    assert changes is not None
    assert RuntimeApi(admin, drain_timeout=30).apply(changes) == (1, 1)
    assert admin.commands == [
        "add server www.example.com/c 10.0.0.3:80 check inter 10s fall 1",
        "enable health www.example.com/c",
        "set server www.example.com/c state ready",
        "set server www.example.com/a state drain",
    ]


def test_drain_timeout_closes_remaining_connections() -> None:
    admin = FakeAdmin(sessions={"a": 1})
    api = RuntimeApi(admin, drain_timeout=0)
    changes = server_only_changes(lb(A, B), lb(B))
    assert changes is not None
    api.apply(changes)
    assert api.sweep() == 1
    assert "shutdown sessions server www.example.com/a" in admin.commands


def test_instance_back_before_its_drain_ended_is_made_ready_again() -> None:
    admin = FakeAdmin(sessions={"a": 1})
    api = RuntimeApi(admin, drain_timeout=30)
    removed = server_only_changes(lb(A, B), lb(B))
    back = server_only_changes(lb(B), lb(A, B))
    assert removed is not None and back is not None
    api.apply(removed)
    api.apply(back)
    assert admin.commands[-1] == "set server www.example.com/a state ready"
    assert not any(c.startswith("add server") for c in admin.commands)
    assert not api.draining


def test_an_error_answer_raises() -> None:
    def refuse(command: str) -> str:
        return "No such backend.\n"

    changes = server_only_changes(lb(A), lb(A, B))
    assert changes is not None
    with pytest.raises(RuntimeApiError, match="No such backend"):
        RuntimeApi(refuse, drain_timeout=30).apply(changes)

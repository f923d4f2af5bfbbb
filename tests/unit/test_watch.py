"""Watching Consul: the blocking-query loop with a fake fetch, and the catalog watcher
against an in-process stand-in for Consul's HTTP API (tests/unit/fake_consul.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from consul_lb.consul.catalog_watch import CatalogWatcher
from consul_lb.consul.client import ConsulClient, ConsulUnavailable, Response
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.watch import BlockingQuery, Outage, WatchTiming
from consul_lb.model import wants

from tests.unit.fake_consul import Entry, FakeConsul

ON = "HAPROXY.ENABLE=true"
FAST = WatchTiming(wait=30.0, floor=0.001, backoff_min=0.01, backoff_max=0.05)


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what or check}")


# -- BlockingQuery ------------------------------------------------------------------------


class Script:
    """A fetch that follows a script: each step an answer index or an exception."""

    def __init__(self, steps: list[int | Exception]) -> None:
        self.steps = steps
        self.asked: list[int | None] = []
        self.done = threading.Event()

    def __call__(self, index: int | None) -> Response:
        self.asked.append(index)
        if not self.steps:
            self.done.set()
            time.sleep(0.05)
            raise ConsulUnavailable("script finished")
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return Response(data={"at": step}, index=step)


def run_query(script: Script, on_data: Callable[[Response], None]) -> BlockingQuery:
    query = BlockingQuery("test", script, on_data, FAST, Outage("consul:8500"))
    query.start()
    assert script.done.wait(10)
    query.stop()
    return query


def test_a_failed_request_is_retried_without_an_index() -> None:
    # After a failure the next call answers at once (no index): it never blocks a full
    # wait on an index Consul may have forgotten (a restart that lost its state).
    script = Script([5, ConsulUnavailable("reset"), 3, 7])
    seen: list[int] = []
    run_query(script, lambda r: seen.append(r.index))
    assert script.asked[:4] == [None, 5, None, 3]
    assert seen == [5, 3, 7]


def test_an_index_that_goes_backwards_is_reset() -> None:
    script = Script([40, 12, 13])
    seen: list[int] = []
    run_query(script, lambda r: seen.append(r.index))
    assert script.asked[:3] == [None, 40, 12]
    assert seen == [40, 12, 13]


def test_a_failing_handler_is_contained_and_the_data_delivered_again() -> None:
    script = Script([5, 5, 6])
    seen: list[int] = []

    def on_data(response: Response) -> None:
        seen.append(response.index)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    query = run_query(script, on_data)
    assert seen == [5, 5, 6]
    assert script.asked[:2] == [None, None]  # asked again without an index
    assert query.status.errors >= 1  # the handler's failure, counted
    assert query.thread.is_alive() or query.stopped.is_set()


def test_any_exception_is_retried_and_recorded() -> None:
    script = Script([OSError("CA file gone"), ValueError("bad JSON"), 9])
    seen: list[int] = []
    query = run_query(script, lambda r: seen.append(r.index))
    assert seen == [9]
    assert query.status.errors >= 2
    assert query.status.last_success > 0


# -- the catalog watcher against the fake Consul -------------------------------------------


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    fake = FakeConsul()
    yield fake
    fake.close()


class Watching:
    def __init__(self, fake: FakeConsul, max_conns: int = 64) -> None:
        host, port = fake.address.split(":")
        self.client = ConsulClient(ConsulConfig(host, int(port)), max_conns=max_conns, max_stale=0)
        self.changes = 0
        self.watcher = CatalogWatcher(self.client, wants, self.changed, FAST, fetchers=4)

    def changed(self) -> None:
        self.changes += 1

    def instances(self, name: str) -> list[tuple[str, int, str]]:
        found = self.watcher.snapshot().get(name)
        return [(i.service_id, i.port, i.status) for i in found.instances] if found else []


@pytest.fixture
def watching(consul: FakeConsul) -> Iterator[Watching]:
    w = Watching(consul)
    yield w
    w.watcher.stop()


def web(n: int, **kw: Any) -> Entry:
    return Entry("web", f"web-{n}", f"10.0.0.{n}", 8000, [ON], **kw)


def test_first_read_is_complete(consul: FakeConsul, watching: Watching) -> None:
    consul.register(web(1))
    consul.register(Entry("other", "o-1", "10.0.1.1", 80, ["unrelated"]))
    watching.watcher.start()
    eventually(watching.watcher.ready, what="the first read")
    assert watching.instances("web") == [("web-1", 8000, "passing")]
    assert watching.watcher.snapshot().get("other") is None  # no HAPROXY.* tag: not watched


def test_hundreds_of_services_on_a_few_connections(consul: FakeConsul) -> None:
    # Consul resets connections above its per-client limit: the watcher never opens
    # more than it is given, whatever the number of services.
    for n in range(300):
        consul.register(Entry(f"svc{n}", f"svc{n}-1", "10.0.0.1", 8000 + n, [ON]))
    w = Watching(consul, max_conns=10)
    try:
        w.watcher.start()
        eventually(w.watcher.ready, what="300 services read")
        assert len(w.watcher.snapshot().services) == 300
        assert consul.max_open_connections <= 10
        consul.register(Entry("svc7", "svc7-2", "10.0.0.2", 9000, [ON]))
        eventually(lambda: len(w.instances("svc7")) == 2, what="the new instance")
        assert consul.max_open_connections <= 10
    finally:
        w.watcher.stop()


def requests_for(consul: FakeConsul, change: Callable[[], None], done: Callable[[], bool]) -> int:
    before: int = sum(consul.requests.values())
    change()
    eventually(done, what="the change")
    time.sleep(0.3)  # let the re-armed blocking queries settle
    return sum(consul.requests.values()) - before


def test_the_first_read_of_many_services_on_few_nodes_is_a_few_requests(consul: FakeConsul) -> None:
    for n in range(300):
        node = f"node-{n % 3}"
        consul.register(Entry(f"svc{n}", f"svc{n}-1", "10.0.0.1", 8000, [ON], node=node))
    consul.set_status("svc7-1", "critical")
    w = Watching(consul)
    try:
        w.watcher.start()
        eventually(w.watcher.ready, what="300 services read")
        snapshot = w.watcher.snapshot()
        assert len(snapshot.services) == 300
        assert w.instances("svc7") == [("svc7-1", 8000, "critical")]
        assert w.instances("svc8") == [("svc8-1", 8000, "passing")]
        # Not 300 reads of /v1/health/service/<name>: the nodes list, the 3 nodes, the
        # failing checks (plus the two watches and the UI summaries).
        assert (
            sum(n for p, n in consul.requests.items() if p.startswith("/v1/health/service/")) == 0
        )
        assert sum(consul.requests.values()) <= 12
    finally:
        w.watcher.stop()


def test_one_changed_instance_costs_a_few_requests_whatever_the_size(consul: FakeConsul) -> None:
    for n in range(200):
        consul.register(Entry(f"svc{n}", f"svc{n}-1", "10.0.0.1", 8000, [ON]))
    w = Watching(consul)
    try:
        w.watcher.start()
        eventually(w.watcher.ready)
        time.sleep(0.3)
        without_check = requests_for(
            consul,
            lambda: consul.register(
                Entry("svc5", "svc5-2", "10.0.0.2", 8000, [ON], has_check=False)
            ),
            lambda: len(w.instances("svc5")) == 2,
        )
        with_check = requests_for(
            consul,
            lambda: consul.register(Entry("svc6", "svc6-2", "10.0.0.2", 8000, [ON])),
            lambda: len(w.instances("svc6")) == 2,
        )
        flipped = requests_for(
            consul,
            lambda: consul.set_status("svc9-1", "critical"),
            lambda: w.instances("svc9") == [("svc9-1", 8000, "critical")],
        )
        # The services query re-armed, the UI summaries, one read of the service (and
        # the checks query re-armed when a check was registered too).
        assert without_check <= 3
        assert with_check <= 4
        # The checks query re-armed and one read of the service.
        assert flipped <= 2
        assert w.watcher.sweeps == 1  # the first read only
    finally:
        w.watcher.stop()


def test_opposite_health_flips_in_one_service_are_both_seen(
    consul: FakeConsul, watching: Watching
) -> None:
    consul.register(web(1))
    consul.register(web(2, status="critical"))
    watching.watcher.start()
    eventually(watching.watcher.ready)
    with consul.lock:  # both at once: the service's check counts stay the same
        consul.entries["web-1"].status = "critical"
        consul.entries["web-2"].status = "passing"
        consul._bump(checks=True)
    eventually(
        lambda: (
            watching.instances("web") == [("web-1", 8000, "critical"), ("web-2", 8000, "passing")]
        ),
        what="both flips",
    )


def test_an_instance_that_moves_port_under_its_id_is_seen(
    consul: FakeConsul, watching: Watching
) -> None:
    # No summary shows a port: the change is found by reading the services again.
    consul.register(web(1))
    consul.register(web(2))
    watching.watcher.start()
    eventually(watching.watcher.ready)
    sweeps = watching.watcher.sweeps
    consul.register(Entry("web", "web-2", "10.0.0.2", 9999, [ON]))
    eventually(lambda: ("web-2", 9999, "passing") in watching.instances("web"), what="the move")
    assert watching.watcher.sweeps == sweeps + 1


def test_after_consul_forgets_its_state_changes_still_arrive(
    consul: FakeConsul, watching: Watching
) -> None:
    consul.register(web(1))
    watching.watcher.start()
    eventually(watching.watcher.ready)
    consul.restart()  # a new data directory: indexes start low again
    consul.register(web(3))
    # Well before the 30 s blocking wait: the watcher does not wait on its old index.
    eventually(lambda: watching.instances("web") == [("web-3", 8000, "passing")], timeout=10)


def test_an_unreachable_consul_is_retried_and_reported(consul: FakeConsul) -> None:
    consul.register(web(1))
    consul.fail = True
    w = Watching(consul)
    try:
        w.watcher.start()
        eventually(lambda: w.watcher.services_query.status.errors >= 2, what="failures")
        assert not w.watcher.ready()
        assert "unreachable" not in (w.watcher.services_query.status.last_error or "")
        assert w.watcher.services_query.status.last_error
        consul.fail = False
        eventually(w.watcher.ready, what="recovery")
        assert w.instances("web") == [("web-1", 8000, "passing")]
    finally:
        w.watcher.stop()


def test_read_once_uses_the_same_code(consul: FakeConsul) -> None:
    consul.register(web(1))
    w = Watching(consul)
    catalog = w.watcher.read_once()
    w.watcher.stop()
    assert [s.name for s in catalog.services] == ["web"]


def test_read_once_raises_when_consul_cannot_be_reached() -> None:
    client = ConsulClient(ConsulConfig("127.0.0.1", 9), max_stale=0, timeout=1)
    watcher = CatalogWatcher(client, wants, lambda: None, FAST)
    with pytest.raises(ConsulUnavailable):
        watcher.read_once()

"""The HAProxy-mode event loop with a real HAProxy and the in-process Consul: start
before Consul answers, signal bursts, HAProxy dying, SIGTERM, resync, contained faults."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from consul_lb.consul.config import ConsulConfig
from consul_lb.manager.loop import STOP, Event
from consul_lb.manager.runner import Runner

from tests.unit.fake_consul import Entry, FakeConsul
from tests.unit.local_haproxy import HAPROXY, Backend, settings_for

ON = "HAPROXY.ENABLE=true"


def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what or check}: last={last!r}")


class Harness:
    def __init__(self, tmp_path: Path, consul: FakeConsul, **settings: Any) -> None:
        if HAPROXY is None:
            pytest.fail("no haproxy binary: run ./dev, which installs Debian's haproxy")
        self.consul = consul
        self.settings = settings_for(tmp_path, **settings)
        host, port = consul.address.split(":")
        self.runner = Runner(self.settings, ConsulConfig(host, int(port)))
        self.backends: dict[str, Backend] = {}
        self.thread: threading.Thread | None = None

    def register(self, service: str, service_id: str, **kw: Any) -> None:
        backend = self.backends.setdefault(service_id, Backend(service_id))
        self.consul.register(Entry(service, service_id, "127.0.0.1", backend.port, [ON], **kw))

    def start_in_background(self) -> None:
        self.runner.start()
        self.thread = threading.Thread(target=self.runner.run_loop, daemon=True)
        self.thread.start()

    def settled(self, *services: str, https: bool = False) -> None:
        """Wait until the applied load balancer publishes ``services`` (and, with ``https``,
        serves a certificate). A reload is counted when its apply ends, after the new
        worker already answers: a count read as soon as traffic flows may miss it."""
        eventually(
            lambda: (
                self.runner.report.state()["waiting"] is None
                and set(services) <= set(self.runner.report.state()["services"])
                and (not https or self.runner.report.state()["tls"]["https_bound"])
            ),
            what=f"published: {sorted(services)}{' and https' if https else ''}",
        )

    def stop(self) -> None:
        self.runner.loop.post(Event(STOP))
        if self.thread is not None:
            self.thread.join(10)
        self.runner.drain()
        for b in self.backends.values():
            b.close()

    def get(self, host: str, port: int | None = None, path: str = "/") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.settings.http_port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host, "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def health(self) -> tuple[int, str]:
        return self.get("lb", self.settings.stats_port, "/_haproxy_health_check")

    def routes(self, host: str, answer: str) -> bool:
        return self.get(host) == (200, answer)


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    fake = FakeConsul()
    yield fake
    fake.close()


@pytest.fixture
def harness(tmp_path: Path, consul: FakeConsul) -> Iterator[Harness]:
    h = Harness(tmp_path, consul)
    yield h
    h.stop()


def test_haproxy_starts_before_consul_answers_and_says_why_it_fails(
    harness: Harness, consul: FakeConsul
) -> None:
    consul.fail = True
    harness.register("web", "web-1")
    harness.start_in_background()
    status, body = eventually(harness.health, what="the health URI")
    assert status == 503 and "waiting for the first complete read of Consul" in body
    state = harness.runner.report.state()
    assert state["waiting"].startswith("first complete read of Consul at http://127.0.0.1:")
    consul.fail = False
    eventually(lambda: harness.health() == (200, "ok"), what="health once Consul answers")
    eventually(lambda: harness.routes("web.example.com", "web-1"), what="routing")
    # Set once the apply returned (HAProxy may route a moment before).
    eventually(lambda: harness.runner.report.state()["waiting"] is None, what="no longer waiting")


def test_an_empty_catalog_is_a_complete_read(harness: Harness) -> None:
    harness.start_in_background()
    eventually(lambda: harness.health() == (200, "ok"), what="health with no service at all")
    eventually(lambda: harness.runner.report.state()["waiting"] is None)
    assert harness.runner.applier.counters.reloads == 0  # the reason left through the API


def test_a_burst_of_sighup_is_coalesced_and_later_changes_still_apply(
    tmp_path: Path, consul: FakeConsul
) -> None:
    h = Harness(tmp_path, consul)
    h.register("web", "web-1")
    h.runner.install_signals()
    h.runner.start()
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            eventually(lambda: h.routes("web.example.com", "web-1"), what="first routing")
            for _ in range(300):
                os.kill(os.getpid(), signal.SIGHUP)
            h.register("api", "api-1")
            eventually(lambda: h.routes("api.example.com", "api-1"), what="a later registration")
            outcome["reloads"] = h.runner.applier.counters.reloads
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc
        finally:
            h.runner.loop.post(Event(STOP))

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        h.runner.run_loop()  # signals are handled by the main thread: the loop's thread here
    finally:
        driver.join(30)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        h.stop()
    assert "error" not in outcome, outcome.get("error")
    # 300 signals, coalesced: a handful of forced reloads, not 300.
    assert 1 <= outcome["reloads"] <= 20
    assert h.runner.errors == {}


def test_haproxy_that_dies_is_restarted(harness: Harness) -> None:
    harness.register("web", "web-1")
    harness.start_in_background()
    eventually(lambda: harness.routes("web.example.com", "web-1"))
    # The first apply replaced the start's process (-sf): read the pid once it is done.
    eventually(lambda: harness.runner.report.state()["waiting"] is None, what="the first apply")
    pid = harness.runner.haproxy.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: harness.runner.haproxy.restarts == 1, what="the restart")
    assert harness.runner.haproxy.pid != pid
    eventually(lambda: harness.routes("web.example.com", "web-1"), what="routing again")


def test_sigterm_fails_the_health_uri_first(harness: Harness) -> None:
    harness.register("web", "web-1")
    harness.start_in_background()
    eventually(lambda: harness.health() == (200, "ok"))
    harness.runner.applier.fail_health()
    assert harness.health() == (503, "draining: this load balancer is stopping")
    assert harness.routes("web.example.com", "web-1")  # still serving meanwhile


def test_the_periodic_resync_heals_a_missed_change(tmp_path: Path, consul: FakeConsul) -> None:
    h = Harness(tmp_path, consul, resync_interval=0.5)
    try:
        h.register("web", "web-1")
        h.start_in_background()
        eventually(lambda: h.routes("web.example.com", "web-1"))
        # A change no watch sees (the index does not move): only a resync finds it.
        moved = Backend("moved")
        h.backends["moved"] = moved
        with consul.lock:
            consul.entries["web-1"].port = moved.port
        eventually(lambda: h.routes("web.example.com", "moved"), what="the resync")
    finally:
        h.stop()


def test_an_exception_while_applying_is_contained_and_retried(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.register("web", "web-1")
    real = harness.runner.applier.apply
    calls: list[int] = []

    def flaky(*args: Any, **kw: Any) -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise OSError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(harness.runner.applier, "apply", flaky)
    harness.start_in_background()
    eventually(lambda: harness.routes("web.example.com", "web-1"), what="the retried change")
    assert harness.runner.errors["apply"] == 2
    assert harness.thread is not None and harness.thread.is_alive()


def test_state_json_and_figures_follow_the_loop(harness: Harness) -> None:
    harness.register("web", "web-1")
    harness.start_in_background()
    eventually(lambda: harness.routes("web.example.com", "web-1"))
    state_json = harness.runner.paths.state_dir / "state.json"
    eventually(lambda: '"web"' in state_json.read_text(), what="state.json naming web")
    figures = harness.runner.report.figures()
    assert figures.services_published == 1 and figures.servers_published == 1
    assert figures.consul_connections <= harness.settings.common.max_conns
    names = {w.name for w in figures.watches}
    assert names == {"services", "checks", "service fetches"}


def test_the_open_file_limit_is_logged_once_at_start(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.register("web", "web-1")
    with caplog.at_level("INFO"):
        harness.start_in_background()
        eventually(lambda: harness.runner.report.state()["waiting"] is None)
    said = [r.getMessage() for r in caplog.records if "open-file limit" in r.getMessage()]
    assert len(said) == 1, said


def test_haproxys_notices_are_printed_once_and_sigterm_raises_no_alert(
    tmp_path: Path, consul: FakeConsul, capfd: pytest.CaptureFixture[str]
) -> None:
    h = Harness(tmp_path, consul)
    h.register("web", "web-1")
    h.start_in_background()
    eventually(lambda: h.routes("web.example.com", "web-1"))
    h.register("api", "api-1")  # a new service: a reload, the old process stops
    eventually(lambda: h.routes("api.example.com", "api-1"))
    h.stop()  # SIGTERM's path: the health URI fails, then HAProxy soft-stops
    out, err = capfd.readouterr()
    # Each HAProxy notice once, through its log target on stdout; none on stderr.
    assert out.count("Proxy http stopped") >= 1
    assert "Proxy http stopped" not in err and "[WARNING]" not in err
    assert "[ALERT]" not in out + err

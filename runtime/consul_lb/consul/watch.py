"""One blocking query that never dies, as consul-template's ``watch/view.go`` polls.

A ``BlockingQuery`` calls ``fetch(index)`` in a loop on its own thread and hands each
answer to ``on_data``. Rules, from consul-template and Consul's blocking-query docs:

- the first call, and every call after a failure, is made without an index (it answers
  at once): a watch never waits a full ``wait`` on an index that may be stale, e.g.
  after a Consul restart that lost its state;
- an index that goes backwards (Consul restarted with a new data directory) is reset;
- any exception, from the request or from ``on_data``, is counted, recorded in the
  watch's status and retried with capped exponential backoff: the thread never ends
  until ``stop()``;
- a short floor with jitter sits between two calls, so that a flapping key cannot make
  a hot loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from consul_lb.consul.client import ConsulError, ConsulHTTPError, Response

log = logging.getLogger("watch")

# Transport errors that, while other requests succeed, usually mean the agent refuses
# connections above its per-client limit.
RESET_WORDS = ("reset by peer", "without response", "RemoteDisconnected", "ProtocolError")


@dataclass(frozen=True)
class WatchTiming:
    wait: float = 60.0  # blocking query wait, seconds
    floor: float = 0.02  # minimum pause between two calls of one watch (plus jitter)
    backoff_min: float = 0.25
    backoff_max: float = 10.0

    def backoff(self, failures: int) -> float:
        """Seconds before retry number ``failures`` (1, 2, ...), with jitter."""
        delay = min(self.backoff_max, self.backoff_min * 2.0 ** max(0, failures - 1))
        return delay * random.uniform(0.5, 1.0)


@dataclass
class WatchStatus:
    """What one watch did last, for /_consul_lb/state and /metrics. Times are Unix
    seconds (0: never)."""

    name: str
    last_success: float = 0.0
    last_error: str = ""
    last_error_time: float = 0.0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def succeeded(self) -> None:
        with self.lock:
            self.last_success = time.time()

    def failed(self, why: str) -> None:
        with self.lock:
            self.errors += 1
            self.last_error = why
            self.last_error_time = time.time()

    def public(self) -> dict[str, object]:
        with self.lock:
            return {
                "name": self.name,
                "last_success": self.last_success or None,
                "last_error": self.last_error or None,
                "last_error_time": self.last_error_time or None,
                "errors": self.errors,
            }


def explain(exc: BaseException, max_conns: int | None = None) -> str:
    """One line saying what failed and, where we can tell, what to do."""
    text = str(exc) if isinstance(exc, ConsulError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ConsulHTTPError) and exc.status == 403:
        return f"{text} (the token lacks a permission: see the README's ACL section)"
    if any(word in text for word in RESET_WORDS):
        limit = f"; this runtime opens at most {max_conns}" if max_conns else ""
        return (
            f"{text} (Consul closed the connection: if it persists, the agent's "
            f"limits.http_max_conns_per_client, 200 by default, may be exceeded by this "
            f"client address{limit} (CONSUL_LB_MAX_CONNS))"
        )
    return text


class Outage:
    """Logs an outage once when it starts and once when it ends, however many watches
    notice it. ``context`` says what keeps running meanwhile."""

    def __init__(self, address: str, max_conns: int | None = None) -> None:
        self.address = address
        self.max_conns = max_conns
        self.since: float | None = None
        self.lock = threading.Lock()
        self.context: Callable[[], str] = lambda: "retrying with backoff"

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            if self.since is not None:
                return
            self.since = time.monotonic()
        log.warning(
            "Consul at %s unreachable (%s); %s",
            self.address,
            explain(exc, self.max_conns),
            self.context(),
        )

    def recovered(self) -> None:
        with self.lock:
            since, self.since = self.since, None
        if since is not None:
            log.info(
                "Consul at %s reachable again after %.1fs", self.address, time.monotonic() - since
            )


class BlockingQuery:
    """One blocking query loop on its own daemon thread."""

    def __init__(
        self,
        name: str,
        fetch: Callable[[int | None], Response],
        on_data: Callable[[Response], None],
        timing: WatchTiming,
        outage: Outage,
    ) -> None:
        self.name = name
        self.fetch = fetch
        self.on_data = on_data
        self.timing = timing
        self.outage = outage
        self.status = WatchStatus(name)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"watch:{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        index: int | None = None
        failures = 0
        while not self.stopped.is_set():
            try:
                response = self.fetch(index)
            except Exception as exc:  # any failure: a watch never ends
                failures += 1
                index = None  # start again without an index: never block on a stale one
                self.status.failed(explain(exc, self.outage.max_conns))
                self.outage.failed(exc)
                self.stopped.wait(self.timing.backoff(failures))
                continue
            self.status.succeeded()
            self.outage.recovered()
            if index is not None and response.index < index:
                log.info(
                    "%s: Consul index went backwards (%d -> %d), resetting",
                    self.name,
                    index,
                    response.index,
                )
            if self.stopped.is_set():
                return
            try:
                self.on_data(response)
            except Exception as exc:
                # Our own handler failed: count it, and deliver the data again later
                # (no index: the next call answers at once).
                failures += 1
                index = None
                log.exception("%s: handling Consul's answer failed; retrying", self.name)
                self.status.failed(f"{type(exc).__name__}: {exc}")
                self.stopped.wait(self.timing.backoff(failures))
                continue
            failures = 0
            # Consul documents index 0 as invalid for blocking; clamp to 1.
            index = max(response.index, 1)
            self.stopped.wait(self.timing.floor * random.uniform(1.0, 2.0))


class Watched:
    """Something kept current by one BlockingQuery (``self.query``, set by the subclass):
    started, stopped and reported as that query."""

    query: BlockingQuery

    @property
    def status(self) -> WatchStatus:
        return self.query.status

    def start(self) -> None:
        self.query.start()

    def stop(self) -> None:
        self.query.stop()

"""Watch Consul's catalog with blocking queries, the way consul-template does.

One blocking query on ``/v1/catalog/services`` follows which services exist and their
tags; one more per watched service on ``/v1/health/service/<name>?passing`` follows its
passing instances. A change to one service wakes only that service's query (and the
services list), so the requests per change do not grow with the number of services.
Each watch runs in its own thread with its own client (py-consul shares one requests
session per client).

Rules, as in consul-template: the first call of a watch does not block; an unchanged
index (the wait expired) or unchanged content is ignored; an index that goes backwards
(Consul restarted with a new data dir) resets the watch; a short floor with jitter sits
between calls; failures retry with capped exponential backoff, and HAProxy keeps serving
the last good configuration meanwhile.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import consul
import requests

from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.consul.config import ConsulConfig
from consul_lb.durations import format_duration

log = logging.getLogger("watch")

# Names Consul accepts but that would need escaping in a URL path are never watched:
# the model skips them anyway (they are not valid host names).
WATCHABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}\Z")


@dataclass
class WatchStats:
    """Counters for the observability endpoints and the benchmarks."""

    requests: int = 0
    errors: int = 0
    last_success: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, ok: bool) -> None:
        with self.lock:
            self.requests += 1
            if ok:
                self.last_success = time.time()
            else:
                self.errors += 1


class Outage:
    """Logs a Consul outage once when it starts and once when it ends, however many
    watches notice it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.since: float | None = None
        self.lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                log.warning(
                    "Consul at %s unreachable (%s); retrying with backoff, "
                    "what was rendered last stays in place",
                    self.address,
                    _describe(exc),
                )

    def recovered(self) -> None:
        with self.lock:
            if self.since is not None:
                log.info(
                    "Consul at %s reachable again after %.1fs",
                    self.address,
                    time.monotonic() - self.since,
                )
                self.since = None


def _describe(exc: BaseException) -> str:
    # requests' messages repeat the URL and the connection object; the class and the
    # root cause are what an operator needs.
    root: BaseException = exc
    while root.__context__ is not None and root.__context__ is not root:
        root = root.__context__
    text = str(root).split("] ")[-1][:160]
    return f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class WatchTiming:
    wait: float = 60.0  # blocking query wait
    floor: float = 0.02  # minimum pause between two calls of one watch (plus jitter)
    backoff_min: float = 0.25
    backoff_max: float = 10.0


class BlockingQuery:
    """One blocking query loop: calls ``fetch(index)``, hands new content to ``on_data``."""

    def __init__(
        self,
        name: str,
        fetch: Callable[[str | None, str], tuple[str, Any]],
        on_data: Callable[[Any], None],
        timing: WatchTiming,
        stats: WatchStats,
        outage: Outage,
    ) -> None:
        self.name = name
        self.fetch = fetch
        self.on_data = on_data
        self.timing = timing
        self.stats = stats
        self.outage = outage
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"watch:{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        index: int | None = None
        last: Any = None
        failures = 0
        while not self.stopped.is_set():
            try:
                raw_index, data = self.fetch(
                    str(index) if index else None, format_duration(self.timing.wait)
                )
            except (consul.ConsulException, requests.RequestException, ValueError) as exc:
                self.stats.count(ok=False)
                self.outage.failed(exc)
                failures += 1
                delay = min(self.timing.backoff_max, self.timing.backoff_min * 2 ** (failures - 1))
                self.stopped.wait(delay * random.uniform(0.5, 1.0))
                continue
            self.stats.count(ok=True)
            self.outage.recovered()
            failures = 0
            new_index = int(raw_index or 0)
            if index is not None and new_index < index:
                # Consul lost its state (restart, new data dir): start over without blocking.
                log.info(
                    "%s: Consul index went backwards (%d -> %d), resetting",
                    self.name,
                    index,
                    new_index,
                )
                index = None
                continue
            # Consul documents index 0 as invalid for blocking; clamp to 1.
            index = max(new_index, 1)
            if data != last and not self.stopped.is_set():
                last = data
                self.on_data(data)
            self.stopped.wait(self.timing.floor * random.uniform(1.0, 2.0))


class CatalogWatcher:
    """Keeps an up-to-date Catalog of the services that ``wanted(name, tags)`` selects."""

    def __init__(
        self,
        config: ConsulConfig,
        wanted: Callable[[str, tuple[str, ...]], bool],
        timing: WatchTiming | None = None,
    ) -> None:
        self.config = config
        self.wanted = wanted
        self.timing = timing or WatchTiming()
        self.stats = WatchStats()
        self.outage = Outage(config.address)
        self.changed = threading.Event()
        self.lock = threading.Lock()
        self.tags: dict[str, tuple[str, ...]] | None = None
        self.instances: dict[str, tuple[Instance, ...]] = {}
        self.health: dict[str, BlockingQuery] = {}
        self.services_query: BlockingQuery | None = None

    def _client(self) -> consul.Consul:
        # A blocking call returns after wait + wait/16 at the latest; leave room for that.
        return self.config.client(timeout=10.0)

    def start(self) -> None:
        c = self._client()

        def fetch(index: str | None, wait: str) -> tuple[str, Any]:
            result: tuple[str, Any] = c.catalog.services(index=index, wait=wait)
            return result

        self.services_query = BlockingQuery(
            "services", fetch, self._on_services, self.timing, self.stats, self.outage
        )
        self.services_query.start()

    def stop(self) -> None:
        if self.services_query:
            self.services_query.stop()
        with self.lock:
            for q in self.health.values():
                q.stop()

    def _on_services(self, data: dict[str, list[str]]) -> None:
        tags = {
            name: tuple(sorted(set(t))) for name, t in data.items() if self.wanted(name, tuple(t))
        }
        with self.lock:
            self.tags = tags
            for name in sorted(set(self.health) - set(tags)):
                self.health.pop(name).stop()
                self.instances.pop(name, None)
            for name in sorted(set(tags) - set(self.health)):
                if WATCHABLE_NAME.match(name):
                    self.health[name] = self._health_query(name)
                    self.health[name].start()
        self.changed.set()

    def _health_query(self, name: str) -> BlockingQuery:
        c = self._client()

        def fetch(index: str | None, wait: str) -> tuple[str, Any]:
            result: tuple[str, Any] = c.health.service(name, index=index, wait=wait, passing=True)
            return result

        def on_data(entries: list[dict[str, Any]]) -> None:
            found = tuple(sorted(Instance.from_health_entry(e) for e in entries))
            with self.lock:
                if name in self.health:
                    self.instances[name] = found
            self.changed.set()

        return BlockingQuery(f"health:{name}", fetch, on_data, self.timing, self.stats, self.outage)

    def ready(self) -> bool:
        """True once the services list and every watched service have been read once, so
        that the first render is of the whole catalog, not of part of it."""
        with self.lock:
            return self.tags is not None and all(n in self.instances for n in self.health)

    def snapshot(self) -> Catalog:
        with self.lock:
            return Catalog.build(self.tags or {}, self.instances)

    def changes(self, wait_min: float, wait_max: float, stop: threading.Event) -> Iterator[Catalog]:
        """Snapshots after each burst of changes: one is taken when nothing changed for
        ``wait_min`` seconds, or ``wait_max`` seconds after the burst began (quiescence,
        consul-template's ``wait``)."""
        while not stop.is_set():
            if not self.changed.wait(0.5):
                continue
            began = last = time.monotonic()
            self.changed.clear()
            while not stop.is_set():
                now = time.monotonic()
                remaining = min(last + wait_min, began + wait_max) - now
                if remaining <= 0:
                    if self.ready():
                        break
                    remaining = 0.05
                if self.changed.wait(remaining):
                    self.changed.clear()
                    last = time.monotonic()
            if not stop.is_set():
                yield self.snapshot()


def read_once(config: ConsulConfig, wanted: Callable[[str, tuple[str, ...]], bool]) -> Catalog:
    """The catalog as it is now, without blocking (for the dry run)."""
    c = config.client(timeout=10.0)
    _, services = c.catalog.services()
    tags = {n: tuple(sorted(set(t))) for n, t in services.items() if wanted(n, tuple(t))}
    instances = {}
    for name in tags:
        if WATCHABLE_NAME.match(name):
            _, entries = c.health.service(name, passing=True)
            instances[name] = tuple(Instance.from_health_entry(e) for e in entries)
    return Catalog.build(tags, instances)

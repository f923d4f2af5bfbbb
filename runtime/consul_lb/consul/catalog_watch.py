"""Follow Consul's catalog with a bounded number of connections, whatever its size.

Two blocking queries say *that* something changed, and where (catalog_changes.py): the
services list with the UI's per-service summaries, and the checks that do not pass.

Then ``/v1/health/service/<name>`` is read for those services only, on a small pool of
fetch threads sharing the client's bounded connection pool: one changed instance costs a
handful of requests, with 100 services or 5,000. A services change that nothing names
(an instance that moved to another port under the same ID, new weights) is found by
reading every watched service again (a sweep), as on start and on the periodic resync.

When ``/v1/internal/ui/services`` is not available (it is internal and unversioned),
every services change without a visible tag difference is a sweep.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from consul_lb.consul import sweep
from consul_lb.consul.catalog import Catalog, Instance, Service
from consul_lb.consul.catalog_changes import (
    CATALOG_SERVICES,
    CHECKS,
    NOT_PASSING,
    UI_SERVICES,
    WATCHABLE_NAME,
    FailingChecks,
    Summary,
    failing_checks,
    services_affected,
    summaries,
)
from consul_lb.consul.client import ConsulClient, ConsulHTTPError, Response
from consul_lb.consul.fetch_queue import EVERYTHING, FetchQueue
from consul_lb.consul.watch import BlockingQuery, Outage, WatchStatus, WatchTiming, explain

log = logging.getLogger("watch")


class CatalogWatcher:
    """Keeps the instances of the services ``wanted(name, tags)`` selects; calls
    ``notify()`` (from its threads) whenever they changed."""

    def __init__(
        self,
        client: ConsulClient,
        wanted: Callable[[str, tuple[str, ...]], bool],
        notify: Callable[[], None],
        timing: WatchTiming | None = None,
        fetchers: int = 8,
    ) -> None:
        self.client = client
        self.wanted = wanted
        self.notify = notify
        self.timing = timing or WatchTiming()
        self.outage = Outage(client.config.address, client.max_conns)
        self.lock = threading.Lock()
        self.summaries: dict[str, Summary] | None = None  # None until the first read
        self.services: dict[str, Service] = {}
        self.failing: FailingChecks = {}
        self.checks_index = 0
        self.services_index = 0
        self.failed: set[str] = set()  # last fetch failed: retried
        self.attempted: set[str] = set()  # fetched (or failed) at least once
        self.ui = True
        self.sweeps = 0
        self.sweeping = False
        self.sweep_again = False
        # A sequence number of stores, and when each service was last stored by its own
        # read: a sweep does not overwrite what a later read found.
        self.stored = 0
        self.updated: dict[str, int] = {}
        self.fetches = 0
        self.fetch_status = WatchStatus("service fetches")
        self.stopped = threading.Event()
        self.fetch_queue = FetchQueue(
            self.lock, lambda name: (self.summaries or {}).get(name), self._read_service, fetchers
        )
        self.services_query = BlockingQuery(
            "services", self._get_services, self._on_services, self.timing, self.outage
        )
        self.checks_query = BlockingQuery(
            "checks", self._get_checks, self._on_checks, self.timing, self.outage
        )

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self.services_query.start()
        self.checks_query.start()
        threading.Thread(target=self._retry_failed, name="fetch-retry", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        self.services_query.stop()
        self.checks_query.stop()
        self.fetch_queue.shutdown()

    def statuses(self) -> list[WatchStatus]:
        return [self.services_query.status, self.checks_query.status, self.fetch_status]

    # -- what the loop reads --------------------------------------------------------
    def ready(self) -> bool:
        """True once the services list was read and every watched service was read (or
        failed) once: the first render is of the whole catalog, yet a service that
        cannot be read does not hold back the others."""
        with self.lock:
            return self.summaries is not None and self.attempted >= self.summaries.keys()

    def missing(self) -> list[str]:
        """Watched services whose last read failed (kept as last read, if ever)."""
        with self.lock:
            return sorted(self.failed)

    def snapshot(self) -> Catalog:
        with self.lock:
            return Catalog(tuple(self.services[n] for n in sorted(self.services)))

    def resync(self) -> None:
        """Read every watched service again (on start, the periodic resync, and after a
        change nothing named): node by node when that takes fewer requests."""
        with self.lock:
            self.sweeps += 1
            if self.sweeping:
                self.sweep_again = True
                return
            self.sweeping = True
        threading.Thread(target=self._sweep, name="sweep", daemon=True).start()

    def _sweep(self) -> None:
        while True:
            with self.lock:
                names = set(self.summaries or ())
                self.sweep_again = False
                started = self.stored
            try:
                self._sweep_once(names, started)
            except Exception as exc:  # read them one by one instead (and retry those)
                self.fetch_status.failed(f"sweep: {explain(exc, self.client.max_conns)}")
                self.outage.failed(exc)
                self.fetch_queue.schedule(names, EVERYTHING)
            with self.lock:
                if not self.sweep_again or self.stopped.is_set():
                    self.sweeping = False
                    return

    def _sweep_once(self, names: set[str], started: int) -> None:
        nodes, count = sweep.node_count(self.client)
        if count >= len(names):
            self.fetch_queue.schedule(names, EVERYTHING)  # fewer requests service by service
            return
        found = sweep.read_by_node(self.client, nodes, names, self.fetch_queue.pool)
        self.fetch_status.succeeded()
        self.outage.recovered()
        with self.lock:
            for name, instances in found.items():
                current = (self.summaries or {}).get(name)
                # A service read by itself after this sweep began is fresher.
                if current is None or self.updated.get(name, -1) > started:
                    continue
                self.services[name] = Service(name, current.tags, instances)
                self.attempted.add(name)
                self.failed.discard(name)
        self.notify()

    # -- services -------------------------------------------------------------------
    def _get_services(self, index: int | None) -> Response:
        return self.client.get(CATALOG_SERVICES, index=index, wait=self.timing.wait)

    def _get_summaries(self) -> dict[str, Summary] | None:
        """Per-service summaries, or None where Consul does not serve them."""
        if not self.ui:
            return None
        try:
            return summaries(self.client.get(UI_SERVICES).data, ui=True)
        except ConsulHTTPError as exc:
            if exc.status != 404:
                raise
        log.warning(
            "%s is not available on this Consul; a change that no tag shows costs a read "
            "of every watched service",
            UI_SERVICES,
        )
        self.ui = False
        return None

    def _on_services(self, response: Response) -> None:
        if response.index and response.index == self.services_index:
            return  # the blocking wait expired: nothing changed
        first = self.summaries is None
        tags = summaries(response.data, ui=False)
        wanted = {
            n: t for n, t in tags.items() if WATCHABLE_NAME.match(n) and self.wanted(n, t.tags)
        }
        # Where the instances changed, without a tag showing it: the UI's summaries.
        found = self._get_summaries()
        if found is not None:
            wanted = {
                n: dataclasses.replace(found.get(n, t), tags=t.tags) for n, t in wanted.items()
            }
        with self.lock:
            old, self.summaries = self.summaries, wanted
            self.services_index = response.index
            gone = set(old or ()) - set(wanted)
            for name in gone:
                self.services.pop(name, None)
                self.failed.discard(name)
                self.attempted.discard(name)
                self.updated.pop(name, None)
            for name, summary in wanted.items():
                known = self.services.get(name)
                if known is not None and known.tags != summary.tags:
                    self.services[name] = Service(name, summary.tags, known.instances)
            changed = {n for n, s in wanted.items() if old is None or old.get(n) != s}
        if gone or first:
            self.notify()  # also the first read: an empty catalog is a complete read too
        if first and changed:
            self.resync()
        elif changed:
            self.fetch_queue.schedule(changed, response.index)
        elif not first and not gone:
            log.debug("services index %d: no summary names the change; sweeping", response.index)
            self.resync()

    # -- checks ---------------------------------------------------------------------
    def _get_checks(self, index: int | None) -> Response:
        return self.client.get(CHECKS, {"filter": NOT_PASSING}, index=index, wait=self.timing.wait)

    def _on_checks(self, response: Response) -> None:
        found = failing_checks(response.data)
        with self.lock:
            old, self.failing = self.failing, found
            self.checks_index = response.index
            affected = services_affected(old, found, self.services.values())
            affected &= set(self.summaries or ())
        self.fetch_queue.schedule(affected, response.index)

    # -- reading one service ---------------------------------------------------------
    def _read_service(self, name: str, summary: Summary | None) -> None:
        if summary is None:
            return
        path = f"/v1/health/service/{quote(name, safe='')}"
        try:
            instances = self._read(path)
            if 0 <= summary.instances != len(instances):
                # The answering server may lag behind the one that announced the
                # change: ask the leader.
                instances = self._read(path, stale=False)
        except Exception as exc:  # retried by _retry_failed; never kills the pool thread
            self.fetch_status.failed(f"{name}: {explain(exc, self.client.max_conns)}")
            self.outage.failed(exc)
            with self.lock:
                self.failed.add(name)
                self.attempted.add(name)
            self.notify()  # readiness may have changed
            return
        self.fetch_status.succeeded()
        with self.lock:
            self.fetches += 1
            self.failed.discard(name)
            first = name not in self.attempted
            self.attempted.add(name)
            current = (self.summaries or {}).get(name)
            if current is None:
                return
            known = self.services.get(name)
            service = Service(name, current.tags, instances)
            self.stored += 1
            self.updated[name] = self.stored
            if known == service and not first:
                return
            self.services[name] = service
        self.notify()

    def _read(self, path: str, stale: bool = True) -> tuple[Instance, ...]:
        data = self.client.get(path, stale=stale).data or ()
        return tuple(sorted(Instance.from_health_entry(e) for e in data))

    def _retry_failed(self) -> None:
        failures = 0
        while not self.stopped.wait(self.timing.backoff(max(1, failures))):
            with self.lock:
                retry = set(self.failed)
            failures = failures + 1 if retry else 0
            if retry:
                self.fetch_queue.schedule(retry, EVERYTHING)

    # -- one read, for the dry run and template --once ------------------------------
    def read_once(self, timeout: float = 60.0) -> Catalog:
        """The catalog as it is now, read with the same code as the watch; raises the
        first error (ConsulError) rather than retrying."""
        self._on_services(self._get_services(None))
        deadline = time.monotonic() + timeout
        while not self.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            failed = sorted(self.failed)
        if failed or not self.ready():
            raise TimeoutError(
                f"could not read {len(failed) or 'every'} service(s) from Consul: "
                f"{self.fetch_status.public()['last_error']}"
            )
        return self.snapshot()

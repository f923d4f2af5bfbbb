"""Reads of one service each (``/v1/health/service/<name>``), on a small pool of fetch
threads sharing the client's bounded connection pool.

Each read is queued with the index of the change that asked for it: the services and
checks queries both report one health flip, and one read covers both. A service is
queued once however many changes ask for it, and a change older than the read already
running asks for none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from consul_lb.consul.catalog_changes import Summary

EVERYTHING = 1 << 62  # the index of a sweep: later than any change


class FetchQueue:
    """Calls ``read(name, summary)`` on the pool for each service scheduled; ``lock`` is
    the watcher's, so that a read starts with the summary current when it left the
    queue (``lookup``, called under the lock)."""

    def __init__(
        self,
        lock: threading.Lock,
        lookup: Callable[[str], Summary | None],
        read: Callable[[str, Summary | None], None],
        fetchers: int,
    ) -> None:
        self.lock = lock
        self.lookup = lookup
        self.read = read
        self.pending: dict[str, int] = {}  # queued, not started
        self.running: dict[str, int] = {}
        self.pool = ThreadPoolExecutor(max_workers=max(1, fetchers), thread_name_prefix="fetch")

    def schedule(self, names: Iterable[str], index: int) -> None:
        """Read these services again, for a change seen at ``index`` (EVERYTHING: a
        sweep or a retry, always read)."""
        for name in sorted(names):
            with self.lock:
                if name in self.pending:
                    self.pending[name] = max(self.pending[name], index)
                    continue
                if self.running.get(name, -1) >= index != EVERYTHING:
                    continue  # a read that started after this change is running
                self.pending[name] = index
            try:
                self.pool.submit(self._fetch, name)
            except RuntimeError:  # shut down
                return

    def _fetch(self, name: str) -> None:
        with self.lock:
            self.running[name] = self.pending.pop(name, 0)
            summary = self.lookup(name)
        try:
            self.read(name, summary)
        finally:
            with self.lock:
                self.running.pop(name, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

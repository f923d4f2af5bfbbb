"""Watch Consul KV keys with blocking queries, one query per key, for template mode.

Keys are not configured up front: template mode renders, sees which keys the templates
asked for, and hands that set to ``KVWatcher.want``. New keys get a blocking query, keys
no template asks for any more lose theirs (consul-template's dependency discovery).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import consul

from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.watch import BlockingQuery, Outage, WatchStats, WatchTiming

log = logging.getLogger("kv")


@dataclass(frozen=True)
class KVValue:
    """What one read of a key found. ``value`` is None when the key does not exist; a
    key that exists with no value reads as "".

    Never None itself: BlockingQuery ignores content equal to the previous one and starts
    from None, so an absent key must still be something, or its first read is lost."""

    value: str | None


def normalise_key(path: str) -> str:
    """consul-template accepts ``/a/b`` and ``a/b`` alike; the HTTP API wants no slash."""
    return path.lstrip("/")


def decode(raw: dict[str, Any] | None) -> KVValue:
    """From py-consul's ``kv.get`` data (``Value`` already base64-decoded to bytes)."""
    if raw is None:
        return KVValue(None)
    value = raw.get("Value")
    if value is None:
        return KVValue("")
    if isinstance(value, bytes):
        # Templates produce text; a stray non-UTF-8 byte should not stop rendering.
        return KVValue(value.decode("utf-8", errors="replace"))
    return KVValue(str(value))


def read_keys(config: ConsulConfig, keys: Iterable[str]) -> dict[str, str | None]:
    """Each key as it is now, without blocking (for ``--once``)."""
    c = config.client(timeout=10.0)
    found: dict[str, str | None] = {}
    for key in sorted(set(keys)):
        _, raw = c.kv.get(normalise_key(key))
        found[key] = decode(raw).value
    return found


class KVWatcher:
    """Keeps the current value of each wanted key; sets ``notify`` when one changes."""

    def __init__(
        self,
        config: ConsulConfig,
        notify: threading.Event,
        timing: WatchTiming | None = None,
        stats: WatchStats | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.config = config
        self.notify = notify
        self.timing = timing or WatchTiming()
        # Shared with the catalog watcher when given, so that a Consul outage is logged
        # once and the request counters cover every query.
        self.stats = stats or WatchStats()
        self.outage = outage or Outage(config.address)
        self.lock = threading.Lock()
        self.queries: dict[str, BlockingQuery] = {}
        self.values: dict[str, str | None] = {}

    def want(self, keys: Iterable[str]) -> None:
        """Watch exactly these keys from now on."""
        wanted = set(keys)
        with self.lock:
            for key in sorted(set(self.queries) - wanted):
                log.debug("no template asks for KV key %r any more; not watching it", key)
                self.queries.pop(key).stop()
                self.values.pop(key, None)
            for key in sorted(wanted - set(self.queries)):
                log.info("watching KV key %r", key)
                self.queries[key] = self._query(key)
                self.queries[key].start()

    def snapshot(self) -> dict[str, str | None]:
        """The keys read at least once, with their values (None: the key does not exist)."""
        with self.lock:
            return dict(self.values)

    def stop(self) -> None:
        with self.lock:
            for query in self.queries.values():
                query.stop()

    def _query(self, key: str) -> BlockingQuery:
        c: consul.Consul = self.config.client(timeout=10.0)
        path = normalise_key(key)

        def fetch(index: str | None, wait: str) -> tuple[str, Any]:
            raw_index, raw = c.kv.get(path, index=index, wait=wait)
            # Only the value matters: a write of the same value (new ModifyIndex) is not
            # a change for the templates.
            return str(raw_index), decode(raw)

        def on_data(found: KVValue) -> None:
            with self.lock:
                # A query stopped by want() may still deliver one late answer; a key
                # dropped and wanted again has a new query, and only that one counts.
                if self.queries.get(key) is not query:
                    return
                self.values[key] = found.value
            self.notify.set()

        # on_data compares with this name; it is bound before the query's thread starts.
        query = BlockingQuery(f"kv:{key}", fetch, on_data, self.timing, self.stats, self.outage)
        return query

"""Watch Consul KV keys with blocking queries, one query per key, for template mode.

Keys are not configured up front: template mode renders, sees which keys the templates
asked for, and hands that set to ``KVWatcher.want``. New keys get a blocking query, keys
no template asks for any more lose theirs (consul-template's dependency discovery).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from consul_lb.consul.client import ConsulClient, ConsulHTTPError, Response
from consul_lb.consul.watch import BlockingQuery, Outage, WatchStatus, WatchTiming

log = logging.getLogger("kv")


@dataclass(frozen=True)
class KVValue:
    """What one read of a key found. ``value`` is None when the key does not exist; a
    key that exists with no value reads as ""."""

    value: str | None


def normalise_key(path: str) -> str:
    """consul-template accepts ``/a/b`` and ``a/b`` alike; the HTTP API wants no slash."""
    return path.lstrip("/")


def decode(entries: list[dict[str, Any]] | None) -> KVValue:
    """From ``/v1/kv/<key>``'s answer (a list of one entry, ``Value`` in base64)."""
    if not entries:
        return KVValue(None)
    raw = entries[0].get("Value")
    if raw is None:
        return KVValue("")
    # Templates produce text; a stray non-UTF-8 byte should not stop rendering.
    return KVValue(base64.b64decode(raw).decode("utf-8", errors="replace"))


def get_key(
    client: ConsulClient, key: str, index: int | None = None, wait: float | None = None
) -> tuple[int, KVValue]:
    """One key: (Consul index, value); a key that does not exist is KVValue(None)."""
    try:
        response = client.get(f"/v1/kv/{quote(normalise_key(key))}", index=index, wait=wait)
    except ConsulHTTPError as exc:
        if exc.status == 404:
            return exc.index, KVValue(None)
        raise
    return response.index, decode(response.data)


def read_keys(client: ConsulClient, keys: Iterable[str]) -> dict[str, str | None]:
    """Each key as it is now, without blocking (for ``--once``)."""
    return {key: get_key(client, key)[1].value for key in sorted(set(keys))}


class KVWatcher:
    """Keeps the current value of each wanted key; sets ``notify`` when one changes."""

    def __init__(
        self,
        client: ConsulClient,
        notify: Callable[[], None],
        timing: WatchTiming | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.client = client
        self.notify = notify
        self.timing = timing or WatchTiming()
        # Shared with the catalog watcher when given, so that a Consul outage is logged
        # once.
        self.outage = outage or Outage(client.config.address, client.max_conns)
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

    def statuses(self) -> list[WatchStatus]:
        with self.lock:
            return [q.status for q in self.queries.values()]

    def _query(self, key: str) -> BlockingQuery:
        last: list[KVValue] = []

        def fetch(index: int | None) -> Response:
            found_index, value = get_key(self.client, key, index, self.timing.wait)
            return Response(value, found_index)

        def on_data(response: Response) -> None:
            found: KVValue = response.data
            # Only the value matters: a write of the same value (new ModifyIndex) is not
            # a change for the templates.
            if last and last[0] == found:
                return
            last[:] = [found]
            with self.lock:
                # A query stopped by want() may still deliver one late answer; a key
                # dropped and wanted again has a new query, and only that one counts.
                if self.queries.get(key) is not query:
                    return
                self.values[key] = found.value
            self.notify()

        # on_data compares with this name; it is bound before the query's thread starts.
        query = BlockingQuery(f"kv:{key}", fetch, on_data, self.timing, self.outage)
        return query

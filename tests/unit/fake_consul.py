"""A small in-process stand-in for Consul's HTTP API, for the fast tier.

It keeps a catalog (services, instances, checks) and KV with one Raft-like index, and
answers the endpoints the runtime reads, with Consul's blocking-query semantics (an
``index`` parameter waits until the index passes it or ``wait`` expires) and Consul's
per-table indexes (services vs checks). It counts requests per path and open
connections, so tests can assert what the runtime costs Consul. The integration tier
runs the real Consul; this one keeps the watcher's tests fast and deterministic.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Entry:
    service: str
    service_id: str
    address: str
    port: int
    tags: list[str]
    node: str = "node-1"
    status: str = "passing"  # of its one check; None-check instances use "passing"
    has_check: bool = True
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    create_index: int = 0
    modify_index: int = 0


class FakeConsul:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.index = 10
        self.services_index = 10
        self.checks_index = 10
        self.entries: dict[str, Entry] = {}
        self.kv: dict[str, tuple[bytes, int]] = {}
        self.kv_sessions: dict[str, str] = {}  # key -> the session holding it (fake_consul_kv)
        self.kv_index = 10
        self.requests: Counter[str] = Counter()
        self.open_connections = 0
        self.max_open_connections = 0
        self.fail = False  # answer every request with a reset connection
        self.generation = 0  # restarts: requests waiting across one are cut
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- changing the catalog -----------------------------------------------------------
    def _bump(self, services: bool = False, checks: bool = False) -> int:
        self.index += 1
        if services:
            self.services_index = self.index
        if checks:
            self.checks_index = self.index
        self.lock.notify_all()
        return self.index

    def register(self, entry: Entry) -> None:
        with self.lock:
            old = self.entries.get(entry.service_id)
            index = self._bump(services=True, checks=entry.has_check)
            entry.create_index = old.create_index if old else index
            entry.modify_index = index
            self.entries[entry.service_id] = entry

    def restart(self, index: int = 2) -> None:
        """A Consul restart that lost its state: connections cut, catalog empty, indexes
        start low again."""
        with self.lock:
            self.generation += 1
            self.entries.clear()
            self.kv.clear()
            self.index = self.services_index = self.checks_index = self.kv_index = index
            self.lock.notify_all()

    def deregister(self, service_id: str) -> None:
        with self.lock:
            entry = self.entries.pop(service_id)
            self._bump(services=True, checks=entry.has_check)

    def set_status(self, service_id: str, status: str) -> None:
        with self.lock:
            self.entries[service_id].status = status
            self._bump(checks=True)

    def put_key(self, key: str, value: str | bytes) -> None:
        with self.lock:
            self.kv_index = self._bump()
            self.kv[key] = (value.encode() if isinstance(value, str) else value, self.kv_index)

    def delete_key(self, key: str) -> None:
        with self.lock:
            self.kv_index = self._bump()
            self.kv.pop(key, None)

    # -- answers ----------------------------------------------------------------------
    def _wait(self, table: str, query: dict[str, str]) -> None:
        """Consul's blocking: wait while the table's index is not past ``index``."""
        if "index" not in query:
            return
        index = int(query["index"])
        wait = _seconds(query.get("wait", "5m"))
        generation = self.generation
        self.lock.wait_for(
            lambda: self._table_index(table) > index or self.generation != generation,
            timeout=wait,
        )
        if self.generation != generation:
            raise ConnectionAbortedError("consul restarted")

    def _table_index(self, table: str) -> int:
        return {
            "services": self.services_index,
            "checks": self.checks_index,
            "all": self.index,
            "kv": self.kv_index,
        }[table]

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any, int]:
        with self.lock:
            if path == "/v1/internal/ui/services":
                self._wait("all", query)
                return 200, self._ui_services(), max(self.services_index, self.checks_index)
            if path == "/v1/catalog/services":
                self._wait("services", query)
                return 200, self._catalog_services(), self.services_index
            if path == "/v1/health/state/any":
                self._wait("checks", query)
                checks = [self._check(e) for e in self.entries.values() if e.has_check]
                if "filter" in query:
                    checks = [c for c in checks if c["Status"] != "passing"]
                return 200, checks, self.checks_index
            if path == "/v1/catalog/nodes":
                nodes = sorted({e.node for e in self.entries.values()})
                return 200, [{"Node": n, "Address": "10.9.9.9"} for n in nodes], self.index
            m = re.fullmatch(r"/v1/catalog/node/(.+)", path)
            if m:
                node = unquote(m.group(1))
                on_node = {
                    e.service_id: self._health(e)["Service"]
                    for e in self._sorted()
                    if e.node == node
                }
                return (
                    200,
                    {"Node": {"Node": node, "Address": "10.9.9.9"}, "Services": on_node},
                    self.index,
                )
            m = re.fullmatch(r"/v1/health/service/(.+)", path)
            if m:
                name = unquote(m.group(1))
                self._wait("all", query)
                found = [self._health(e) for e in self._sorted() if e.service == name]
                return 200, found, self.index
            m = re.fullmatch(r"/v1/kv/(.+)", path)
            if m:
                key = unquote(m.group(1))
                self._wait("kv", query)
                if "recurse" in query:  # every key under the prefix
                    under = sorted((k, v) for k, v in self.kv.items() if k.startswith(key))
                    if not under:
                        return 404, None, self.kv_index
                    return 200, [self._kv_entry(k) for k, _ in under], self.kv_index
                if key not in self.kv:
                    return 404, None, self.kv_index
                return 200, [self._kv_entry(key)], self.kv_index
        return 404, None, 0

    def _kv_entry(self, key: str) -> dict[str, Any]:
        value, modify = self.kv[key]
        entry: dict[str, Any] = {
            "Key": key,
            "Value": base64.b64encode(value).decode() if value else None,
            "ModifyIndex": modify,
        }
        if key in self.kv_sessions:
            entry["Session"] = self.kv_sessions[key]
        return entry

    def change(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        """PUT and DELETE: none here (fake_consul_kv.py adds KV writes and sessions)."""
        return 405, None

    def _sorted(self) -> Iterator[Entry]:
        return iter(sorted(self.entries.values(), key=lambda e: e.service_id))

    def _ui_services(self) -> list[dict[str, Any]]:
        by_name: dict[str, list[Entry]] = {}
        for e in self._sorted():
            by_name.setdefault(e.service, []).append(e)
        return [
            {
                "Name": name,
                "Tags": sorted({t for e in entries for t in e.tags}),
                "Nodes": [e.node for e in entries],
                "InstanceCount": len(entries),
                "ChecksPassing": sum(1 for e in entries if e.has_check and e.status == "passing"),
                "ChecksWarning": sum(1 for e in entries if e.has_check and e.status == "warning"),
                "ChecksCritical": sum(1 for e in entries if e.has_check and e.status == "critical"),
            }
            for name, entries in sorted(by_name.items())
        ]

    def _catalog_services(self) -> dict[str, list[str]]:
        found: dict[str, set[str]] = {}
        for e in self.entries.values():
            found.setdefault(e.service, set()).update(e.tags)
        return {n: sorted(t) for n, t in found.items()}

    def _check(self, e: Entry) -> dict[str, Any]:
        return {
            "Node": e.node,
            "CheckID": f"service:{e.service_id}",
            "Status": e.status,
            "ServiceID": e.service_id,
            "ServiceName": e.service,
        }

    def _health(self, e: Entry) -> dict[str, Any]:
        return {
            "Node": {"Node": e.node, "Address": "10.9.9.9"},
            "Service": {
                "ID": e.service_id,
                "Service": e.service,
                "Address": e.address,
                "Port": e.port,
                "Tags": e.tags,
                "Weights": e.weights,
                "CreateIndex": e.create_index,
                "ModifyIndex": e.modify_index,
            },
            "Checks": [self._check(e)] if e.has_check else [],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake.open_connections += 1
                    fake.max_open_connections = max(
                        fake.max_open_connections, fake.open_connections
                    )

            def finish(self) -> None:
                super().finish()
                with fake.lock:
                    fake.open_connections -= 1

            def do_GET(self) -> None:
                self.serve("GET")

            def do_PUT(self) -> None:
                self.serve("PUT")

            def do_DELETE(self) -> None:
                self.serve("DELETE")

            def serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else b""
                with fake.lock:
                    fake.requests[parts.path] += 1
                    failing = fake.fail
                if failing:
                    self.close_connection = True
                    self.connection.close()
                    return
                try:
                    if method == "GET":
                        status, body, index = fake.answer(parts.path, query)
                    else:
                        (status, body), index = fake.change(method, parts.path, query, payload), 0
                except ConnectionAbortedError:
                    self.close_connection = True
                    self.connection.close()
                    return
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Consul-Index", str(index))
                self.send_header("X-Consul-LastContact", "0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _seconds(raw: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", raw)
    if not m:
        return 300.0
    value, unit = int(m.group(1)), m.group(2)
    return value / 1000 if unit == "ms" else value * (60 if unit == "m" else 1)

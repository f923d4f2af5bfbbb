"""Where certificates come from, both watched; each calls ``notify()`` (from its own
thread) when what it holds changed, and the manager loop reads ``snapshot()``.

- ``DirSource``: ``HAPROXY_TLS_CERT_DIR``, scanned every second. A file is read again
  when its modification time, size or inode changed (an atomic rename gives a new inode).
  Sub-directories and dot-files are not certificates (editors' and atomic writers'
  temporary files start with a dot; so do Kubernetes' ``..data`` folders, whose files are
  reached through the symbolic links next to them).
- ``KVSource``: ``HAPROXY_TLS_CERT_KV``, one recursive blocking query on the prefix
  through the runtime's bounded Consul client: one more connection, whatever the number
  of certificates.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from consul_lb.consul.client import ConsulClient, ConsulHTTPError, Response
from consul_lb.consul.watch import BlockingQuery, Outage, Watched, WatchTiming
from consul_lb.tls.bundle import MAX_BUNDLE
from consul_lb.tls.certs import Raw

log = logging.getLogger("tls")

SCAN_INTERVAL = 1.0  # seconds between two scans of the directory


class DirSource:
    def __init__(
        self, directory: Path, notify: Callable[[], None], interval: float = SCAN_INTERVAL
    ) -> None:
        self.directory = directory
        self.notify = notify
        self.interval = interval
        self.lock = threading.Lock()
        self.files: dict[str, Raw] = {}
        self.seen: dict[str, tuple[int, int, int]] = {}  # name -> (mtime_ns, size, inode)
        self.problem = ""  # why the directory itself cannot be read, logged once
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tls-dir", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def snapshot(self) -> dict[str, Raw]:
        with self.lock:
            return dict(self.files)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                changed = self.scan()
            except Exception:  # the scan never stops: log, try again next time
                log.exception("scanning %s failed", self.directory)
                continue
            if changed:
                self.notify()

    def scan(self) -> bool:
        """Read what changed since the last scan; True when something did."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            if self.problem != str(exc):
                log.warning("HAPROXY_TLS_CERT_DIR %s cannot be read: %s", self.directory, exc)
                self.problem = str(exc)
            entries = []
        else:
            if self.problem:
                log.info("HAPROXY_TLS_CERT_DIR %s can be read again", self.directory)
                self.problem = ""
        signature: dict[str, tuple[int, int, int]] = {}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_file():  # follows symbolic links
                    continue
                st = entry.stat()
            except OSError:
                continue
            signature[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self.seen:
            return False
        files = self.snapshot()
        for name in set(files) - set(signature):
            del files[name]
        for name, sig in signature.items():
            if self.seen.get(name) != sig or name not in files:
                files[name] = self._read(self.directory / name, sig[1])
        self.seen = signature
        with self.lock:
            changed = files != self.files
            self.files = files
        return changed

    @staticmethod
    def _read(path: Path, size: int) -> Raw:
        if size > MAX_BUNDLE:
            return OSError(0, f"larger than {MAX_BUNDLE // 1024} KiB")
        try:
            return path.read_bytes()
        except OSError as exc:
            return exc


def decode_entries(entries: Any, prefix: str) -> dict[str, Raw]:
    """``/v1/kv/<prefix>?recurse``'s answer -> name under the prefix -> bytes. Folder keys
    (ending in "/") and the prefix itself are not certificates."""
    found: dict[str, Raw] = {}
    for entry in entries or ():
        key = str(entry.get("Key", ""))
        name = key[len(prefix) :] if key.startswith(prefix) else ""
        if not name or name.endswith("/"):
            continue
        value = entry.get("Value")
        try:
            found[name] = base64.b64decode(value) if value else b""
        except ValueError:
            found[name] = b""
    return found


class KVSource(Watched):
    def __init__(
        self,
        client: ConsulClient,
        prefix: str,
        notify: Callable[[], None],
        outage: Outage,
        timing: WatchTiming | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.notify = notify
        self.lock = threading.Lock()
        self.files: dict[str, Raw] = {}
        self.read = False  # answered at least once
        self.query = BlockingQuery(
            f"tls-kv:{prefix}", self._fetch, self._on_data, timing or WatchTiming(), outage
        )

    def snapshot(self) -> dict[str, Raw]:
        with self.lock:
            return dict(self.files)

    def _fetch(self, index: int | None) -> Response:
        path = f"/v1/kv/{quote(self.prefix)}"
        try:
            response = self.client.get(
                path, params={"recurse": ""}, index=index, wait=self.query.timing.wait
            )
        except ConsulHTTPError as exc:
            if exc.status == 404:  # no key under the prefix (yet)
                return Response([], exc.index)
            raise
        return response

    def _on_data(self, response: Response) -> None:
        files = decode_entries(response.data, self.prefix)
        with self.lock:
            changed = files != self.files or not self.read
            self.files, self.read = files, True
        if changed:
            self.notify()

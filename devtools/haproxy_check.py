"""``haproxy -c`` in bulk, with the HAProxy of the project's own image.

The host's HAProxy (if any) is not the one the image ships, so configurations are
checked inside one long-running container of the image. Starting ``docker exec`` per
configuration costs 100+ ms; instead one ``docker exec -i`` runs a small Python server
inside the container that reads length-prefixed requests on stdin, checks each one in
its own scratch directory (with its ``hosts.map``) on a pool of workers, and answers
with HAProxy's verdict. HAProxy's own start-up (~50 ms) is then the only per-config
cost, spread over the workers.

The container has no network (``--network none``): server addresses that are host
names are resolved by ``haproxy -c`` (``init-addr last,libc,none``), and without a
network that fails at once instead of waiting for a DNS timeout.

A rendered haproxy.cfg names its maps by absolute path in the live directory
(``<state dir>/live/hosts.map``); pass that directory as ``live`` and its references are
pointed at the scratch directory, as ``consul_lb.haproxy.files.check`` does, so that
the maps checked are the ones submitted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import subprocess
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

import docker
import docker.errors

# Runs inside the image (its python3, standard library only). Frames in both directions:
# a 4-byte big-endian length, then UTF-8 JSON.
SERVER = r"""
import json, os, resource, shutil, struct, subprocess, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor

inp, out = sys.stdin.buffer, sys.stdout.buffer
lock = threading.Lock()

def send(obj):
    data = json.dumps(obj).encode()
    with lock:
        out.write(struct.pack(">I", len(data)) + data)
        out.flush()

def check(req):
    tmp = tempfile.mkdtemp(prefix="check-")
    live = req.get("live")
    try:
        for name, text in req["files"].items():
            # Names are chosen by the host side; refuse anything that is not a plain name.
            if "/" in name or name in ("", ".", ".."):
                raise ValueError("bad file name %r" % name)
            if live and name == "haproxy.cfg":
                text = text.replace(live.rstrip("/") + "/", tmp + "/")
            with open(os.path.join(tmp, name), "w", encoding="utf-8",
                      errors="surrogateescape") as fh:
                fh.write(text)
        started = time.monotonic()
        proc = subprocess.run(["haproxy", "-c", "-f", os.path.join(tmp, "haproxy.cfg")],
                              capture_output=True, text=True, errors="replace")
        took = time.monotonic() - started
        send({"id": req["id"], "rc": proc.returncode, "seconds": took,
              "output": proc.stderr + proc.stdout})
    except Exception as exc:
        send({"id": req["id"], "rc": -1, "seconds": 0.0, "output": "checker: %r" % exc})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
send({"id": 0, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
      "version": version.splitlines()[0] if version else ""})
with ThreadPoolExecutor(int(sys.argv[1])) as pool:
    while True:
        head = inp.read(4)
        if len(head) < 4:
            break
        (size,) = struct.unpack(">I", head)
        pool.submit(check, json.loads(inp.read(size)))
"""


@dataclass(frozen=True)
class CheckResult:
    rc: int
    output: str
    seconds: float  # wall time of `haproxy -c` inside the container

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def alerts(self) -> list[str]:
        return [ln.strip() for ln in self.output.splitlines() if "[ALERT]" in ln]

    @property
    def warnings(self) -> list[str]:
        return [ln.strip() for ln in self.output.splitlines() if "[WARNING]" in ln]


def _frame(obj: Any) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def _read_frame(stream: IO[bytes]) -> Any:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return json.loads(stream.read(size))


class HaproxyChecker:
    """One container of ``image`` checking configurations with its ``haproxy -c``.

    Use as a context manager; the container is removed on exit. ``submit`` does not
    wait (the workers run in parallel with the caller); ``check`` does.
    """

    def __init__(self, image: str, workers: int | None = None) -> None:
        self.image = image
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.name = f"consul-lb-check-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.container: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.nofile = 0
        self.version = ""
        self.submitted = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[CheckResult]] = {}
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def __enter__(self) -> HaproxyChecker:
        client = docker.from_env()
        self.container = client.containers.run(
            self.image,
            entrypoint=["sleep", "infinity"],
            command=[],
            name=self.name,
            network_mode="none",
            detach=True,
            labels={"consul-lb.purpose": "haproxy-check"},
        )
        try:
            command = ["python3", "-u", "-c", SERVER, str(self.workers)]
            self.proc = subprocess.Popen(
                ["docker", "exec", "-i", self.name, *command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert self.proc.stdout is not None
            hello = _read_frame(self.proc.stdout)
            if not hello:
                raise RuntimeError(f"the checker in {self.image} did not start")
            self.nofile, self.version = int(hello["nofile"]), str(hello["version"])
            self._reader = threading.Thread(target=self._read, name="haproxy-check", daemon=True)
            self._reader.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while (reply := _read_frame(self.proc.stdout)) is not None:
            with self._lock:
                future = self._pending.pop(int(reply["id"]), None)
            if future is not None:
                future.set_result(
                    CheckResult(int(reply["rc"]), str(reply["output"]), float(reply["seconds"]))
                )
        # The server went away: nothing pending will ever be answered.
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(RuntimeError("the haproxy checker exited"))

    def submit(
        self, files: Mapping[str, str], live: str | os.PathLike[str] | None = None
    ) -> Future[CheckResult]:
        """Queue ``files`` (name -> text, ``haproxy.cfg`` among them) for ``haproxy -c``;
        ``live``: the directory haproxy.cfg expects them in (see the module's doc)."""
        assert self.proc is not None and self.proc.stdin is not None
        future: Future[CheckResult] = Future()
        request_id = next(self._ids)
        request = {
            "id": request_id,
            "files": dict(files),
            "live": os.fspath(live) if live else None,
        }
        with self._lock:
            self._pending[request_id] = future
            self.submitted += 1
            self.proc.stdin.write(_frame(request))
            self.proc.stdin.flush()
        return future

    def check(
        self,
        files: Mapping[str, str],
        timeout: float = 120.0,
        live: str | os.PathLike[str] | None = None,
    ) -> CheckResult:
        return self.submit(files, live).result(timeout=timeout)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):  # the server may be gone already
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            if self._reader is not None:
                self._reader.join(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if self.container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self.container.remove(force=True)
            self.container = None

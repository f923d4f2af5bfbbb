"""Supervise HAProxy in master-worker mode and talk to its sockets.

The master (``-W``) keeps the listening sockets and hands them to each new worker, so a
reload through the master CLI drops no connection attempt ("seamless" strategy). The
master's answer to ``reload`` says whether the new worker started (HAProxy >= 2.7).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from runtime.haproxy_files import Paths

log = logging.getLogger("haproxy")


class ReloadError(RuntimeError):
    pass


def socket_command(path: str, command: str, timeout: float = 30.0) -> str:
    """Send one command to an HAProxy CLI socket and return the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


@dataclass
class ReloadResult:
    ok: bool
    detail: str


class Haproxy:
    """One HAProxy master process, restarted with backoff when it dies unexpectedly."""

    def __init__(self, paths: Paths, binary: str = "haproxy") -> None:
        self.paths = paths
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()  # one start/reload/stop at a time
        self.stopping = False
        self.reloads = 0
        self.restarts = 0

    def command(self) -> list[str]:
        return [
            self.binary,
            "-W",  # master-worker
            "-db",  # stay in the foreground, under the runtime
            "-S",
            f"{self.paths.master_socket},mode,600",
            "-f",
            str(self.paths.config),
        ]

    def start(self) -> None:
        with self.lock:
            self._start()

    def _start(self) -> None:
        self.paths.master_socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.command())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ReloadError(f"haproxy exited at start with code {self.proc.returncode}")
            if self.paths.admin_socket.exists() and self.paths.master_socket.exists():
                try:
                    socket_command(str(self.paths.admin_socket), "show info", timeout=2)
                    log.info("haproxy started (master pid %d)", self.proc.pid)
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise ReloadError("haproxy did not open its admin socket within 10s")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def save_server_state(self) -> None:
        """Keep health, weights and maintenance states across the reload."""
        try:
            state = socket_command(str(self.paths.admin_socket), "show servers state", timeout=5)
        except OSError as exc:
            log.warning("could not save server state before reload: %s", exc)
            return
        tmp = self.paths.server_state.with_suffix(".tmp")
        tmp.write_text(state)
        tmp.replace(self.paths.server_state)

    def reload(self) -> ReloadResult:
        with self.lock:
            if not self.running():
                self._start()
                return ReloadResult(True, "started")
            self.save_server_state()
            answer = socket_command(str(self.paths.master_socket), "reload", timeout=60)
            self.reloads += 1
            # HAProxy >= 2.7 answers "Success=1" or "Success=0" followed by the
            # new process's start-up messages.
            if "Success=1" in answer:
                return ReloadResult(True, "")
            detail = " | ".join(
                ln.strip() for ln in answer.splitlines() if ln.strip() and ln.strip() != "--"
            )
            return ReloadResult(False, detail[:500] or "no answer from the master CLI")

    def set_server_state(self, backend: str, server: str, state: str) -> str:
        return socket_command(
            str(self.paths.admin_socket), f"set server {backend}/{server} state {state}"
        )

    def soft_stop(self, timeout: float) -> int:
        """SIGUSR1 to the master: listeners close, open connections finish (bounded by
        hard-stop-after), then HAProxy exits."""
        with self.lock:
            self.stopping = True
            if not self.running() or self.proc is None:
                return 0
            self.proc.send_signal(signal.SIGUSR1)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("haproxy still running %.0fs after soft-stop; terminating", timeout)
                self.proc.terminate()
                return self.proc.wait(10)

    def watch(self, stop: threading.Event) -> None:
        """Restart HAProxy with capped exponential backoff if it dies on its own."""
        failures = 0
        while not stop.wait(0.5):
            if self.stopping or self.proc is None or self.proc.poll() is None:
                continue
            code = self.proc.returncode
            delay = min(30.0, 0.5 * 2**failures)
            log.error("haproxy exited unexpectedly (code %s); restarting in %.1fs", code, delay)
            if stop.wait(delay):
                return
            try:
                with self.lock:
                    if not self.stopping:
                        self._start()
                        self.restarts += 1
                failures = 0
            except (ReloadError, OSError) as exc:
                failures += 1
                log.error("haproxy restart failed: %s", exc)

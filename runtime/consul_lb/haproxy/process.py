"""Supervise HAProxy and reload it, with one of three strategies.

- ``seamless`` (default): master-worker mode (``-W``). The master keeps the listening
  sockets and hands them to each new worker, so a reload refuses no connection; it is
  asked for through the master CLI, whose answer says whether the new worker started.
- ``syn-drop``: the original design. Incoming SYNs to the frontend ports are dropped with
  iptables while a new HAProxy starts with ``-sf <old pids>``; clients retransmit their
  SYN (after about 1 s) and get through. Needs NET_ADMIN.
- ``naive``: a plain ``-sf`` reload with no protection: the baseline of the benchmark.
  Connections queued on the old process's sockets when it closes them are reset.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from consul_lb.haproxy import iptables
from consul_lb.haproxy.files import Paths

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
    """Common supervision: start, restart with backoff, server state, soft stop."""

    strategy = ""

    def __init__(self, paths: Paths, binary: str = "haproxy") -> None:
        self.paths = paths
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()  # one start/reload/stop at a time
        self.stopping = False
        self.restarts = 0

    # -- to be provided by each strategy ---------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def _reload(self, ports: Sequence[int]) -> ReloadResult:
        raise NotImplementedError

    def prepare(self) -> None:
        """Checks and clean-up before the first start (e.g. capabilities)."""

    # -- common ----------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            self._start()

    def _start(self) -> None:
        self.paths.server_state.touch(exist_ok=True)
        self.proc = subprocess.Popen(self.command())
        self._wait_ready(self.proc)
        log.info("haproxy started (pid %d, %s reloads)", self.proc.pid, self.strategy)

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Until the admin socket answers for ``proc`` (or a worker of it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ReloadError(f"haproxy exited at start with code {proc.returncode}")
            if self._serving(proc):
                return
            time.sleep(0.01)
        raise ReloadError(f"haproxy did not answer on its admin socket within {timeout:.0f}s")

    def _serving(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once the admin socket answers (in master-worker mode, a worker does)."""
        return self._info() is not None

    def _info(self) -> str | None:
        try:
            return socket_command(str(self.paths.admin_socket), "show info", timeout=2)
        except OSError:
            return None

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

    def reload(self, ports: Sequence[int] = ()) -> ReloadResult:
        """Apply the installed configuration; ``ports`` are the frontend ports."""
        with self.lock:
            if not self.running():
                self._start()
                return ReloadResult(True, "started")
            self.save_server_state()
            return self._reload(ports)

    def admin(self, command: str) -> str:
        return socket_command(str(self.paths.admin_socket), command)

    def soft_stop(self, timeout: float) -> int:
        """SIGUSR1: listeners close, open connections finish (bounded by
        hard-stop-after), then HAProxy exits."""
        with self.lock:
            self.stopping = True
            if not self.running() or self.proc is None:
                return 0
            self._signal_all(signal.SIGUSR1)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("haproxy still running %.0fs after soft-stop; terminating", timeout)
                self._signal_all(signal.SIGTERM)
                return self.proc.wait(10)

    def _signal_all(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def reap(self) -> None:
        """Collect exited old processes (strategies that start one process per reload)."""

    def watch(self, stop: threading.Event) -> None:
        """Restart HAProxy with capped exponential backoff if it dies on its own."""
        failures = 0
        while not stop.wait(0.5):
            self.reap()
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


class MasterWorker(Haproxy):
    strategy = "seamless"

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

    def _start(self) -> None:
        self.paths.master_socket.unlink(missing_ok=True)
        super()._start()

    def _reload(self, ports: Sequence[int]) -> ReloadResult:
        answer = self._master_command("reload")
        # HAProxy >= 2.7 answers "Success=1" or "Success=0" followed by the new
        # worker's start-up messages.
        if "Success=1" in answer:
            return ReloadResult(True, "")
        detail = " | ".join(
            ln.strip() for ln in answer.splitlines() if ln.strip() and ln.strip() != "--"
        )
        return ReloadResult(False, detail[:500] or "no answer from the master CLI")

    def _master_command(self, command: str, patience: float = 10.0) -> str:
        """The master re-executes itself on every reload and reopens its CLI socket; a
        command sent in that window is refused, so it is tried again for a while."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return socket_command(str(self.paths.master_socket), command, timeout=60)
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


class SoftFinish(Haproxy):
    """One HAProxy process per configuration; a reload starts a new one with
    ``-sf <old pids>`` so the old one stops listening and finishes its connections."""

    strategy = "naive"

    def __init__(self, paths: Paths, binary: str = "haproxy") -> None:
        super().__init__(paths, binary)
        self.old: list[subprocess.Popen[bytes]] = []

    def command(self) -> list[str]:
        return [self.binary, "-db", "-f", str(self.paths.config)]

    def _serving(self, proc: subprocess.Popen[bytes]) -> bool:
        # The old process answers on the same socket path until the new one has bound
        # it: wait for the new one's own answer.
        info = self._info()
        return info is not None and f"\nPid: {proc.pid}\n" in info

    def _reload(self, ports: Sequence[int]) -> ReloadResult:
        return self._replace()

    def _replace(self) -> ReloadResult:
        old = self.proc
        assert old is not None
        new = subprocess.Popen([*self.command(), "-sf", str(old.pid)])
        try:
            self._wait_ready(new)
        except ReloadError as exc:
            if new.poll() is None:
                new.kill()
            new.wait()
            return ReloadResult(False, f"{exc}; the previous process keeps serving")
        self.old.append(old)
        self.proc = new
        return ReloadResult(True, "")

    def reap(self) -> None:
        with self.lock:
            self.old = [p for p in self.old if p.poll() is None]

    def old_processes(self) -> int:
        return sum(1 for p in self.old if p.poll() is None)

    def _signal_all(self, sig: signal.Signals) -> None:
        for p in [*self.old, self.proc]:
            if p is not None and p.poll() is None:
                p.send_signal(sig)


class SynDrop(SoftFinish):
    strategy = "syn-drop"

    def prepare(self) -> None:
        iptables.check_available()
        removed = iptables.remove_all()
        if removed:
            log.warning("removed %d SYN-drop rule(s) left by an earlier run", removed)

    def _reload(self, ports: Sequence[int]) -> ReloadResult:
        try:
            iptables.drop_syn(ports)
            return self._replace()
        finally:
            # Always, even when the reload failed: a rule left behind would cut the
            # load balancer off.
            iptables.remove_all()


def make(strategy: str, paths: Paths) -> Haproxy:
    """The supervisor for a strategy named in settings.RELOAD_STRATEGIES."""
    kinds = {kind.strategy: kind for kind in (MasterWorker, SynDrop, SoftFinish)}
    return kinds[strategy](paths)

"""Supervise HAProxy and reload it, with one of three strategies.

- ``seamless`` (default): master-worker mode (``-W``). The master keeps the listening
  sockets and hands them to each new worker, so a reload refuses no connection; it is
  asked for through the master CLI, whose answer says whether the new worker started.
- ``syn-drop``: the original design. Incoming SYNs to the frontend ports are dropped with
  iptables while a new HAProxy starts with ``-sf <old pids>``; clients retransmit their
  SYN (after about 1 s) and get through. Needs NET_ADMIN.
- ``naive``: a plain ``-sf`` reload with no protection: the baseline of the benchmark.
  Connections queued on the old process's sockets when it closes them are reset.

Only the manager loop calls these methods (no lock): the exit of the main HAProxy
process is reported through ``on_exit`` from a waiter thread, for the loop to handle.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consul_lb.child import Process
from consul_lb.haproxy import iptables
from consul_lb.haproxy.admin import socket_command
from consul_lb.haproxy.files import Paths

log = logging.getLogger("haproxy")


class ReloadError(RuntimeError):
    """HAProxy could not be started (the message says why)."""


@dataclass
class ReloadResult:
    ok: bool
    detail: str


class Haproxy:
    """Common supervision: start, reload, soft stop. ``on_exit(pid, code)`` is called
    from a waiter thread when the main process exits and no stop was asked for."""

    strategy = ""

    def __init__(
        self,
        paths: Paths,
        on_exit: Callable[[int, int], None] | None = None,
        binary: str = "haproxy",
    ) -> None:
        self.paths = paths
        self.binary = binary
        self.on_exit = on_exit
        self.proc: Process | None = None
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
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _exited(self, proc: Process, code: int) -> None:
        if proc is self.proc and not self.stopping and self.on_exit is not None:
            self.on_exit(proc.pid, code)

    def _spawn(self, argv: Sequence[str]) -> Process:
        # HAProxy prints each of its notices twice: on stderr and through its "log
        # stdout" target (how the container shows its request logs). Its stderr is read
        # here and only its alerts are shown, when it fails to start.
        return Process(argv, on_exit=self._exited, keep_stderr=50)

    def start(self) -> None:
        """Start HAProxy on the installed files; ReloadError if it does not come up."""
        self.paths.server_state.touch(exist_ok=True)
        proc = self._spawn(self.command())
        try:
            self._wait_ready(proc)
        except ReloadError:
            proc.stop(signal.SIGKILL, 5)
            raise
        self.proc = proc
        log.info("haproxy started (pid %d, %s reloads)", proc.pid, self.strategy)

    def _wait_ready(self, proc: Process, timeout: float = 10.0) -> None:
        """Until the admin socket answers for ``proc`` (or a worker of it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.running():
                proc.exited.wait(1)  # let its last stderr lines arrive
                alerts = [ln for ln in proc.stderr_tail if "ALERT" in ln]
                said = " | ".join(alerts[-5:]) or "no alert"
                raise ReloadError(f"haproxy exited at start with code {proc.code}: {said}")
            if self._serving(proc):
                return
            time.sleep(0.01)
        raise ReloadError(f"haproxy did not answer on its admin socket within {timeout:.0f}s")

    def _serving(self, proc: Process) -> bool:
        """True once the admin socket answers (in master-worker mode, a worker does)."""
        return self._info() is not None

    def _info(self) -> str | None:
        try:
            return socket_command(str(self.paths.admin_socket), "show info", timeout=2)
        except OSError:
            return None

    def running(self) -> bool:
        return self.proc is not None and self.proc.running()

    def reload(self, ports: Sequence[int] = ()) -> ReloadResult:
        """Apply the installed configuration; ``ports`` are the frontend ports. Starts
        HAProxy when it does not run (ReloadError if it cannot)."""
        if not self.running():
            self.start()
            return ReloadResult(True, "started")
        return self._reload(ports)

    def admin(self, command: str) -> str:
        return socket_command(str(self.paths.admin_socket), command)

    def soft_stop(self, timeout: float) -> int:
        """SIGUSR1: listeners close, open connections finish (bounded by
        hard-stop-after), then HAProxy exits."""
        self.stopping = True
        if self.proc is None or not self.proc.running():
            return 0
        self._signal_all(signal.SIGUSR1)
        code = self.proc.wait(timeout)
        if code is None:
            log.warning("haproxy still running %.0fs after soft-stop; terminating", timeout)
            self._signal_all(signal.SIGTERM)
            code = self.proc.wait(10)
        return code if code is not None else -1

    def _signal_all(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            self.proc.send(sig)

    def old_processes(self) -> int:
        return 0


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

    def start(self) -> None:
        self.paths.master_socket.unlink(missing_ok=True)
        super().start()

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old: list[Process] = []  # replaced processes finishing their connections

    def command(self) -> list[str]:
        return [self.binary, "-db", "-f", str(self.paths.config)]

    def _serving(self, proc: Process) -> bool:
        # The old process answers on the same socket path until the new one has bound
        # it: wait for the new one's own answer.
        info = self._info()
        return info is not None and f"\nPid: {proc.pid}\n" in info

    def _reload(self, ports: Sequence[int]) -> ReloadResult:
        return self._replace()

    def _replace(self) -> ReloadResult:
        old = self.proc
        assert old is not None
        new = self._spawn([*self.command(), "-sf", str(old.pid)])
        try:
            self._wait_ready(new)
        except ReloadError as exc:
            new.stop(signal.SIGKILL, 5)
            return ReloadResult(False, f"{exc}; the previous process keeps serving")
        self.old = [p for p in self.old if p.running()] + [old]
        self.proc = new
        return ReloadResult(True, "")

    def old_processes(self) -> int:
        return sum(1 for p in self.old if p.running())

    def _signal_all(self, sig: signal.Signals) -> None:
        for p in [*self.old, self.proc]:
            if p is not None:
                p.send(sig)


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


STRATEGIES: dict[str, type[Haproxy]] = {
    kind.strategy: kind for kind in (MasterWorker, SynDrop, SoftFinish)
}


def make(
    strategy: str,
    paths: Paths,
    on_exit: Callable[[int, int], None] | None = None,
    binary: str = "haproxy",
) -> Haproxy:
    """The supervisor for a strategy named in settings.RELOAD_STRATEGIES."""
    return STRATEGIES[strategy](paths, on_exit, binary)

"""Child processes, for both modes (HAProxy, and template mode's ``--exec`` child).

As consul-template's ``child`` package: one type starts a process, reports its exit,
signals it, and stops it with a signal and then SIGKILL after a timeout. Each process
is waited for on its own small thread, which only reports the exit through a callback
(the callers post it on their event queue): no zombie, and no state changed there.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence

log = logging.getLogger("child")


def exit_status(returncode: int) -> int:
    """Popen's -N (killed by signal N) as a shell reports it, 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Process:
    """One started child. ``on_exit(process, code)`` is called once, from a waiter
    thread, when it exits (whoever made it exit)."""

    def __init__(
        self,
        argv: Sequence[str],
        on_exit: Callable[[Process, int], None] | None = None,
        own_group: bool = False,
        keep_stderr: int = 0,
    ) -> None:
        self.argv = list(argv)
        # Its own process group: a Ctrl-C in a terminal reaches only the runtime, which
        # then stops the child as configured instead of both at once.
        self.popen: subprocess.Popen[bytes] = subprocess.Popen(
            self.argv,
            process_group=0 if own_group else None,
            stderr=subprocess.PIPE if keep_stderr else None,
        )
        self.pid = self.popen.pid
        # With keep_stderr, the child's stderr is read here instead of passed on: its
        # last lines, for the caller to say why the child failed.
        self.stderr_tail: deque[str] = deque(maxlen=max(1, keep_stderr))
        if keep_stderr:
            threading.Thread(
                target=self._read_stderr, name=f"stderr:{self.pid}", daemon=True
            ).start()
        self.on_exit = on_exit
        self.exited = threading.Event()
        threading.Thread(target=self._wait, name=f"wait:{self.pid}", daemon=True).start()

    def _wait(self) -> None:
        code = exit_status(self.popen.wait())
        self.exited.set()
        if self.on_exit is not None:
            try:
                self.on_exit(self, code)
            except Exception:  # a callback bug must not go unseen, nor kill anything
                log.exception("handling the exit of pid %d failed", self.pid)

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            self.stderr_tail.append(raw.decode(errors="replace").rstrip())

    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def code(self) -> int | None:
        rc = self.popen.returncode
        return None if rc is None else exit_status(rc)

    def send(self, sig: signal.Signals) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        if not self.exited.wait(timeout):
            return None
        return self.code

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """``sig``, then SIGKILL after ``timeout`` seconds; the exit code."""
        self.send(sig)
        code = self.wait(timeout)
        if code is None:
            log.warning(
                "pid %d still running %.1fs after %s; sending SIGKILL", self.pid, timeout, sig.name
            )
            self.send(signal.SIGKILL)
            code = self.wait(10)
        return code if code is not None else -1

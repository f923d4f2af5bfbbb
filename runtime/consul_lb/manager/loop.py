"""One queue, one consumer: the event loop that owns what HAProxy runs.

As consul-template's runner (``manager/runner.go``, ``Start``): every source of events
(watch changes, timers, HAProxy exits, signals) puts an event on one queue, and only
the loop's thread acts on them. ``post`` is safe from any thread and from signal
handlers: ``queue.SimpleQueue.put`` is reentrant (Python's documentation of
``SimpleQueue``), so a burst of signals can neither deadlock nor recurse.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """Something happened; ``kind`` names it, ``detail`` carries its data."""

    kind: str
    detail: object = None


# Kinds posted from outside the loop.
CHANGED = "changed"  # the watcher's data changed
HAPROXY_EXITED = "haproxy-exited"  # detail: (pid, exit code)
RELOAD = "reload"  # SIGHUP
STOP = "stop"  # SIGTERM, SIGINT


class EventLoop:
    """The queue plus named one-shot timers; a timer that falls due is an event of its
    own name. ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.timers: dict[str, float] = {}
        self.clock = clock

    def post(self, event: Event) -> None:
        """From any thread or signal handler."""
        self.queue.put(event)

    def after(self, name: str, seconds: float) -> None:
        """Fire timer ``name`` in ``seconds`` (replacing an earlier setting of it)."""
        self.timers[name] = self.clock() + max(0.0, seconds)

    def at_latest(self, name: str, seconds: float) -> None:
        """Fire ``name`` in ``seconds``, or earlier if it is already set to."""
        when = self.clock() + max(0.0, seconds)
        self.timers[name] = min(when, self.timers.get(name, when))

    def cancel(self, name: str) -> None:
        self.timers.pop(name, None)

    def pending(self, name: str) -> bool:
        return name in self.timers

    def next(self, idle: float = 1.0) -> Event | None:
        """The next event: one posted, or a timer that fell due; None after ``idle``
        seconds with neither."""
        now = self.clock()
        due = min(self.timers.items(), key=lambda kv: kv[1], default=None)
        if due is not None and due[1] <= now:
            del self.timers[due[0]]
            return Event(due[0])
        wait = idle if due is None else min(idle, due[1] - now)
        try:
            return self.queue.get(timeout=max(0.0, wait))
        except queue.Empty:
            return None

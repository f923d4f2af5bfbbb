"""The load balancer container's log, followed: its ``applied: ...`` lines and when it
began to watch Consul."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

import docker
import docker.errors
import requests

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (\w+) (\S+): (.*)$")
APPLIED = re.compile(r"applied: (\d+) services?, (\d+) servers?.*?(\d+) ms\)$")
WATCHING = re.compile(r"watching Consul at ")


def now_s(stamp: str) -> float:
    """Unix time of an ISO time in UTC (Docker's nanoseconds cut to microseconds)."""
    stamp = stamp.rstrip("Z")
    head, _, frac = stamp.partition(".")
    parsed = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    return parsed.timestamp()


@dataclass(frozen=True)
class Applied:
    at: float  # Unix time of the log line
    services: int
    servers: int
    took: float  # seconds the apply took (render, haproxy -c, reload or runtime API)


class LogFollower(threading.Thread):
    """Follows the container's log; keeps its ``applied: ...`` lines and reports the
    runtime's warnings and errors (each distinct one once, a few at most)."""

    def __init__(self, container_id: str, say: Callable[[str], None]) -> None:
        super().__init__(name="logs", daemon=True)
        self.container_id = container_id
        self.say = say
        self.applied: list[Applied] = []
        self.watching: float | None = None  # when the runtime began to watch Consul
        self.reported: set[str] = set()
        self.lock = threading.Lock()

    def run(self) -> None:
        client = docker.from_env()
        with suppress(docker.errors.APIError, requests.RequestException, OSError):
            stream = client.api.logs(self.container_id, stream=True, follow=True)
            pending = b""
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.line(line.decode(errors="replace"))
        client.close()

    def line(self, text: str) -> None:
        m = LOG_LINE.match(text)
        if not m:
            return
        stamp, level, component, message = m.groups()
        applied = APPLIED.match(message)
        if applied:
            with self.lock:
                self.applied.append(
                    Applied(
                        now_s(stamp),
                        int(applied.group(1)),
                        int(applied.group(2)),
                        int(applied.group(3)) / 1000,
                    )
                )
        elif WATCHING.match(message):
            self.watching = now_s(stamp)
        elif level in ("WARNING", "ERROR") and len(self.reported) < 8:
            key = re.sub(r"\d+", "N", message)[:120]
            if key not in self.reported:
                self.reported.add(key)
                self.say(f"    runtime {level.lower()}: {component}: {message[:300]}")

    def wait(self, done: Callable[[Applied], bool], deadline: float) -> Applied | None:
        while time.monotonic() < deadline:
            with self.lock:
                found = next((a for a in self.applied if done(a)), None)
            if found is not None or not self.is_alive():
                return found
            time.sleep(0.05)
        return None

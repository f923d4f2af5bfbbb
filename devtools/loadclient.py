"""A small HTTP load client for the reload tests and benchmarks (standard library only,
so that it runs inside the project's own images on the test network).

Two modes, as in the reload measurements:
- ``close``: a new TCP connection per request; the latency includes the connect, so SYN
  retransmits (1 s each) show up, which wrk's latency figure hides;
- ``keepalive``: each worker keeps its connection open; a request that fails on an open
  connection is a failure (the client did nothing wrong), a ``Connection: close`` answer
  is not (the client simply reconnects).

It stops by itself after ``--duration`` seconds or ``--max-requests`` requests, and prints
one JSON object with the counts and latency percentiles.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import threading
import time
from collections import Counter

STOP = threading.Event()  # set by SIGTERM (docker stop): finish and report


class Worker(threading.Thread):
    def __init__(
        self, args: argparse.Namespace, deadline: float, budget: list[int], lock: threading.Lock
    ) -> None:
        super().__init__(daemon=True)
        self.args = args
        self.deadline = deadline
        self.budget = budget
        self.lock = lock
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.conn: http.client.HTTPConnection | None = None

    def take(self) -> bool:
        with self.lock:
            if self.budget[0] <= 0:
                return False
            self.budget[0] -= 1
            return True

    def connection(self) -> http.client.HTTPConnection:
        if self.conn is None or self.args.mode == "close":
            self.conn = http.client.HTTPConnection(
                self.args.host, self.args.port, timeout=self.args.timeout
            )
        return self.conn

    def run(self) -> None:
        headers = {"Host": self.args.host_header}
        if self.args.mode == "close":
            headers["Connection"] = "close"
        while time.monotonic() < self.deadline and not STOP.is_set() and self.take():
            started = time.monotonic()
            conn = self.connection()
            try:
                conn.request("GET", self.args.path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                self.statuses[resp.status] += 1
                if resp.status != 200:
                    self.errors[f"status {resp.status}"] += 1
                if resp.will_close or self.args.mode == "close":
                    conn.close()
                    self.conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.errors[type(exc).__name__] += 1
                conn.close()
                self.conn = None
            self.latencies.append(time.monotonic() - started)
            if self.args.pause:
                time.sleep(self.args.pause)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", required=True, help="address to connect to")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host-header", required=True, help="Host header to send")
    p.add_argument("--path", default="/")
    p.add_argument("--mode", choices=("close", "keepalive"), default="close")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0, help="seconds, at most")
    p.add_argument("--max-requests", type=int, default=2_000_000)
    p.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between a worker's requests")
    args = p.parse_args()
    socket.setdefaulttimeout(args.timeout)
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())
    lock = threading.Lock()
    budget = [args.max_requests]
    started = time.monotonic()
    workers = [Worker(args, started + args.duration, budget, lock) for _ in range(args.concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(args.duration + args.timeout + 5)
    elapsed = time.monotonic() - started
    latencies = [x for w in workers for x in w.latencies]
    errors: Counter[str] = sum((w.errors for w in workers), Counter())
    print(
        json.dumps(
            {
                "mode": args.mode,
                "requests": len(latencies),
                "failed": sum(errors.values()),
                "errors": dict(errors),
                "seconds": round(elapsed, 2),
                "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
                "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
                "max_ms": round(max(latencies, default=0.0) * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

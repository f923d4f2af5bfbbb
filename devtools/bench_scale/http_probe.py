"""Requests to the load balancer: one per new connection, as a client would send them."""

from __future__ import annotations

import http.client
import json
import time
from contextlib import suppress

Addr = tuple[str, int]  # (host, port)
POLL = 0.002  # seconds between two requests while waiting for the first routed one


def get(addr: Addr, host: str, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    """One request on a new connection; (0, b"") when it fails."""
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def backend_of(answer: tuple[int, bytes]) -> str:
    status, body = answer
    if status != 200:
        return ""
    try:
        return str(json.loads(body)["backend"])
    except (ValueError, KeyError, TypeError):
        return ""


def first_routed(addr: Addr, host: str, backend: str, deadline: float) -> float | None:
    """Poll until ``backend`` answers for ``host``: the Unix time of that answer."""
    while time.time() < deadline:
        if backend_of(get(addr, host)) == backend:
            return time.time()
        time.sleep(POLL)
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: each metric name -> the sum over its label sets."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.partition("{")[0]
        with suppress(ValueError):
            values[name] = values.get(name, 0.0) + float(value)
    return values

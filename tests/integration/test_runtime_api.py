"""Instance churn applied through HAProxy's runtime API: no reload, no failed request."""

from __future__ import annotations

import csv
import io
import random
import socket
import threading
import time

from tests.integration.conftest import DOMAIN, Stack, finish_load, start_load, wait_until

ENABLE = "HAPROXY.ENABLE=true"
BACKENDS = ("web-1", "web-2", "web-3")
EVENTS = 500


def server_stats(stack: Stack, backend: str) -> dict[str, dict[str, str]]:
    """HAProxy's own view of a backend's servers (``show stat``), by server name."""
    script = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        "s.connect('/var/lib/consul-lb/admin.sock'); s.sendall(b'show stat -1 4 -1\\n'); "
        "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())"
    )
    out = stack.container("haproxy").exec_run(["python3", "-c", script]).output.decode()
    rows = csv.DictReader(io.StringIO(out.lstrip("# ")))
    return {r["svname"]: r for r in rows if r["pxname"] == backend}


def test_instance_churn_needs_no_reload_and_loses_no_request(stack: Stack) -> None:
    rng = random.Random(5)
    host = f"pool.{DOMAIN}"
    ids = [f"pool-{i}" for i in range(1, 7)]
    for i, sid in enumerate(ids[:3]):
        stack.register(sid, "pool", BACKENDS[i % 3], [ENABLE], check={"TTL": "600s"})
        stack.ttl(sid, "pass")
    wait_until(lambda: stack.backend_of(host), what="pool routed")
    wait_until(lambda: len(server_stats(stack, host)) == 3, what="3 servers")
    before = stack.settled("pool")
    active = set(ids[:3])
    failing: set[str] = set()
    load = start_load(stack, "haproxy", host, "close", 4)
    try:
        for _ in range(EVENTS):
            serving = active - failing
            choice = rng.random()
            if choice < 0.35 and len(active) < len(ids):
                sid = rng.choice(sorted(set(ids) - active))
                stack.register(sid, "pool", rng.choice(BACKENDS), [ENABLE], check={"TTL": "600s"})
                stack.ttl(sid, "pass")
                active.add(sid)
            elif choice < 0.6 and len(serving) > 2:
                sid = rng.choice(sorted(serving))
                stack.deregister(sid)
                active.discard(sid)
            elif choice < 0.8 and len(serving) > 2:
                sid = rng.choice(sorted(serving))
                stack.ttl(sid, "fail")
                failing.add(sid)
            elif failing:
                sid = rng.choice(sorted(failing))
                stack.ttl(sid, "pass")
                failing.discard(sid)
            time.sleep(0.02)
        serving = active - failing
        # Let the last change land and every server get some traffic.
        wait_until(
            lambda: set(server_stats(stack, host)) == serving,
            timeout=30,
            what="HAProxy's servers equal the passing instances (drains finished)",
        )
        time.sleep(2)
    finally:
        result = finish_load(load)
    after = stack.state()
    print(f"churn: {result}; state before {before}; after {after}")
    assert after["reloads"] == before["reloads"], "a server change caused a reload"
    assert after["runtime_api_changes"] > before["runtime_api_changes"]
    assert after["runtime_api_fallbacks"] == before["runtime_api_fallbacks"]
    failed_lines = [line for line in stack.logs().splitlines() if host in line and " 503 " in line]
    assert result["failed"] == 0, (result, failed_lines[-10:])
    stats = server_stats(stack, host)
    assert set(stats) == serving
    assert all(int(row["stot"]) > 0 for row in stats.values()), stats


def test_long_request_to_a_deregistered_instance_completes(stack: Stack) -> None:
    host = f"stream.{DOMAIN}"
    stack.register("stream-1", "stream", "web-1", [ENABLE])
    wait_until(lambda: stack.backend_of(host) == "web-1", what="stream routed")
    before = stack.settled("stream")
    body: list[bytes] = []

    def stream() -> None:
        port = int(stack.http.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET /stream/10 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            while chunk := sock.recv(65536):
                body.append(chunk)
                if b"\r\n0\r\n\r\n" in b"".join(body):
                    break

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(2)
    # Another instance keeps the service (and so the backend) in place: a server change.
    stack.register("stream-2", "stream", "web-2", [ENABLE])
    stack.deregister("stream-1")
    wait_until(lambda: stack.backend_of(host) == "web-2", what="new requests go to web-2")
    reader.join(30)
    text = b"".join(body).decode()
    assert "200 OK" in text
    assert all(f"web-1 {i}\n" in text for i in range(10)), text
    assert text.endswith("0\r\n\r\n")
    assert stack.state()["reloads"] == before["reloads"]
    # Drained, then deleted once its last connection closed.
    wait_until(lambda: "stream-1" not in server_stats(stack, host), what="stream-1 deleted")

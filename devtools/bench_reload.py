"""`invoke bench reload`: each reload strategy under load, side by side, in one run.

For each strategy (``none`` = no reloads, ``naive`` = plain ``-sf``, ``syn-drop``,
``seamless``) and each client mode (new connection per request, keep-alive): a fresh
HAProxy container from the image, two sample backends, and a load client container on a
private Docker network for ``duration`` seconds while the strategy reloads HAProxy every
``interval`` seconds. Latency includes connection set-up.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from devtools import images

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("none", "naive", "syn-drop", "seamless")
MODES = ("close", "keepalive")


def _mount(name: str) -> dict[str, dict[str, str]]:
    return {str(ROOT / "devtools" / name): {"bind": f"/srv/{name}", "mode": "ro"}}


def _last_json(container: Any, marker: str = "") -> dict[str, Any]:
    lines = container.logs(stdout=True, stderr=False).decode().strip().splitlines()
    found = [ln[len(marker) :] for ln in lines if ln.startswith(marker + "{")]
    if not found:
        errors = container.logs(stdout=False, stderr=True).decode().strip().splitlines()
        raise images.ImageError(f"no result from {container.name}: {(lines + errors)[-8:]}")
    result: dict[str, Any] = json.loads(found[-1])
    return result


def run_one(
    client: docker.DockerClient,
    names: images.ImageNames,
    network: str,
    servers: str,
    strategy: str,
    mode: str,
    duration: float,
    interval: float,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    lb = client.containers.run(
        names.ref("haproxy"),
        [
            "--strategy",
            "seamless" if strategy == "none" else strategy,
            "--servers",
            servers,
            "--interval",
            str(interval),
            "--duration",
            str(duration + 2),
        ]
        + ([] if strategy == "none" else ["--reloads"]),
        entrypoint=["/usr/bin/tini", "--", "/opt/consul-lb/bin/python", "/srv/reload_driver.py"],
        name=f"bench-lb-{tag}",
        network=network,
        cap_add=["NET_ADMIN"] if strategy == "syn-drop" else [],
        volumes=_mount("reload_driver.py"),
        detach=True,
    )
    try:
        deadline = time.monotonic() + 30
        while b"ready" not in lb.logs(stdout=True, stderr=False):
            if time.monotonic() > deadline:
                raise images.ImageError(f"{strategy}: HAProxy did not start: {lb.logs()[-500:]!r}")
            time.sleep(0.1)
        load = client.containers.run(
            names.ref("consul-template"),
            [
                "/srv/loadclient.py",
                f"--host=bench-lb-{tag}",
                "--host-header=www.bench.local",
                f"--mode={mode}",
                "--concurrency=8",
                f"--duration={duration}",
            ],
            entrypoint="python3",
            network=network,
            volumes=_mount("loadclient.py"),
            detach=True,
        )
        try:
            load.wait(timeout=duration + 60)
            traffic = _last_json(load)
        finally:
            load.remove(force=True)
        lb.wait(timeout=duration + 60)
        reloads = _last_json(lb, "RESULT ")
    finally:
        lb.remove(force=True)
    return {"strategy": strategy, **traffic, **reloads}


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| strategy | mode | requests | failed | failed % | p50 ms | p99 ms | max ms "
        "| reloads | leftover old processes | zombies |"
    )
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        pct = 100.0 * r["failed"] / r["requests"] if r["requests"] else 0.0
        lines.append(
            f"| {r['strategy']} | {r['mode']} | {r['requests']} | {r['failed']} | {pct:.2f} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['reloads']} "
            f"| {r['leftover_old_processes']} | {r['zombies']} |"
        )
    return "\n".join(lines)


def main(
    names: images.ImageNames,
    duration: float = 30.0,
    interval: float = 0.1,
    strategies: tuple[str, ...] = STRATEGIES,
    out: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    client = images.client()
    network = client.networks.create(f"consul-lb-bench-{uuid.uuid4().hex[:6]}")
    backends = []
    rows: list[dict[str, Any]] = []
    try:
        for i in (1, 2):
            backends.append(
                client.containers.run(
                    names.ref("consul-template"),
                    ["/srv/echo.py"],
                    entrypoint="python3",
                    network=network.name,
                    name=f"{network.name}-web-{i}",
                    environment={"ECHO_NAME": f"web-{i}"},
                    volumes={
                        str(ROOT / "deploy" / "demo" / "echo.py"): {
                            "bind": "/srv/echo.py",
                            "mode": "ro",
                        }
                    },
                    detach=True,
                )
            )
        servers = ",".join(f"{b.name}:8000" for b in backends)
        for strategy in strategies:
            for mode in MODES:
                out(
                    f"==> {strategy}, {mode}: {duration:.0f}s under load"
                    + ("" if strategy == "none" else f", a reload every {interval * 1000:.0f} ms")
                )
                row = run_one(
                    client, names, network.name, servers, strategy, mode, duration, interval
                )
                out(
                    f"    {row['requests']} requests, {row['failed']} failed "
                    f"{row['errors'] or ''}, {row['reloads']} reloads"
                )
                rows.append(row)
    finally:
        for b in backends:
            b.remove(force=True)
        network.remove()
    out("")
    out(table(rows))
    return rows

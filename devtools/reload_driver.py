"""Runs inside the HAProxy image for `invoke bench reload`: starts HAProxy with the
runtime's own reload strategy and configuration for one service, reloads it every
``--interval`` seconds for ``--duration`` seconds, then reports what it saw as JSON.

It drives the strategy objects directly (no Consul, no rendering on each reload), so the
figures are those of the reload mechanism itself at a fixed rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

from consul_lb import model
from consul_lb.haproxy.files import Paths, install
from consul_lb.haproxy.limits import fit
from consul_lb.haproxy.process import make
from consul_lb.manager.ports import frontend_ports
from consul_lb.render import Renderer
from consul_lb.settings import from_env


def count_processes() -> tuple[int, int]:
    """(haproxy processes, zombies) in this container."""
    out = subprocess.run(
        ["ps", "-eo", "stat=,comm="], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    rows = [line.split(None, 1) for line in out if line.strip()]
    haproxies = sum(1 for _stat, comm in rows if comm == "haproxy")
    zombies = sum(1 for stat, _comm in rows if stat.startswith("Z"))
    return haproxies, zombies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--strategy", required=True)
    p.add_argument("--servers", required=True, help="comma-separated host:port")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--reloads", action="store_true", help="reload (else only serve)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds before counting")
    args = p.parse_args()
    settings = from_env(
        {
            "HAPROXY_DOM": "bench.local",
            "HAPROXY_RELOAD_STRATEGY": args.strategy,
            "CONSUL_LB_STATE_DIR": "/var/lib/consul-lb",
        }
    )
    servers = tuple(
        model.Server(f"s{i}", host, int(port))
        for i, (host, port) in enumerate(s.rsplit(":", 1) for s in args.servers.split(","))
    )
    lb = model.LoadBalancer(
        (
            model.Backend(
                "www",
                "www.bench.local",
                "http",
                "roundrobin",
                None,
                servers,
                hosts=("www.bench.local",),
            ),
        ),
        (),
    )
    paths = Paths(settings.state_dir)
    install(Renderer(settings, paths.template_paths()).render(lb, fit(10000, 10000)), paths)
    haproxy = make(args.strategy, paths)
    haproxy.prepare()
    haproxy.start()
    print("ready", flush=True)
    started = time.monotonic()
    reloads = failed = 0
    worst_extra = 0
    while time.monotonic() - started < args.duration:
        if args.reloads:
            result = haproxy.reload(frontend_ports(lb, settings))
            reloads += 1
            failed += 0 if result.ok else 1
            worst_extra = max(worst_extra, count_processes()[0])
        next_at = started + (reloads or 1) * args.interval
        time.sleep(max(0.0, next_at - time.monotonic()) if args.reloads else 0.5)
    time.sleep(args.settle)
    haproxies, zombies = count_processes()
    current = 2 if args.strategy == "seamless" else 1
    # HAProxy logs to the same stdout: mark the result line.
    print(
        "RESULT "
        + json.dumps(
            {
                "reloads": reloads,
                "failed_reloads": failed,
                "leftover_old_processes": haproxies - current,
                "max_haproxy_processes": max(worst_extra, haproxies),
                "zombies": zombies,
            }
        ),
        flush=True,
    )
    haproxy.soft_stop(timeout=10)


if __name__ == "__main__":
    main()

"""``invoke bench scale``: the load balancer against a Consul agent with its DEFAULT limits
holding 100, 1,000 and 5,000 services of 5 instances each, side by side, in one run.

For each size:

- in-process, on an equal catalog: ``model.build`` + ``Renderer.render`` as the runtime
  runs them, for its first render of the whole catalog (best of a few) and for one
  changed service (warm model cache and renderer), and ``haproxy -c`` of the result with
  the image's own HAProxy;
- the image (``consul-lb haproxy``) started against that Consul, one container per size:
  time from the container's start (Docker's ``StartedAt``) to its first applied
  configuration (its log line ``applied: ...``); every service and server routed
  (HAProxy's own stats list them); its render metric; the RSS of the runtime's Python
  process (settled, and its peak ``VmHWM``) and of HAProxy, from ``/proc``; connections
  to Consul COUNTED in the container's network namespace (``/proc/<pid>/net/tcp``,
  sampled every 0.1 s: the most open at once) next to the runtime's own
  ``consul_lb_consul_connections_opened``; Consul requests for one changed instance
  (``consul_lb_consul_requests_total`` before and after one registration, once quiet);
- Consul change -> first routed request: from the ``PUT /v1/catalog/register`` to the
  first HTTP 200 from the new instance through HAProxy (with the service's Host header,
  a new connection every ~2 ms), on the no-reload path (one more instance of an existing
  service: the runtime API) and on the reload path (a new service); and where the time
  of the no-reload path goes, from the runtime's state: when its services watch got
  Consul's answer and its service read ended (``watches``), then the loop's stages
  (``last_change``). These are Unix times: host and containers share one clock.

One of the services is the probe: one instance on a sample backend ("A"); the timed
instances go to a second one ("B"). Both are HAProxy answering by itself, so that the
backends add no time of their own. The other services' instances are on 127.0.0.1
ports nothing listens on (health checks are refused at once). Everything runs on this
machine: containers on a network of the bench's own (reached at their addresses when
this host can, else through ports published on 127.0.0.1); every container and the
network are removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import closing

import docker.errors
import requests

from devtools import images
from devtools.bench_scale.catalog import INSTANCES
from devtools.bench_scale.http_probe import POLL
from devtools.bench_scale.in_process import render_in_process
from devtools.bench_scale.measure import measure
from devtools.bench_scale.report import ms, table
from devtools.bench_scale.results import Row
from devtools.bench_scale.stack import Bench
from devtools.haproxy_check import HaproxyChecker

SIZES = (100, 1000, 5000)
ROUNDS = 50  # at 100 services; fewer at larger sizes (rounds_at)
RENDER_WAIT = "10ms:100ms"  # as `bench converge`; the figures use it


def rounds_at(services: int, rounds: int) -> int:
    """Rounds at a size: ``rounds`` at 100 services or fewer, then fewer as a change
    costs more (divided by the square root of the growth), at least 5."""
    if services <= 100:
        return rounds
    return max(min(rounds, 5), math.ceil(rounds / math.sqrt(services / 100)))


def main(
    names: images.ImageNames,
    sizes: tuple[int, ...] = SIZES,
    rounds: int = ROUNDS,
    render_wait: str = RENDER_WAIT,
    out: Callable[[str], None] = print,
) -> None:
    sizes = tuple(sorted(set(sizes)))
    if not sizes or sizes[0] < 2 or rounds < 1:
        raise ValueError("sizes must be at least 2 services and rounds at least 1")
    began = time.monotonic()

    def say(text: str) -> None:
        out(f"[{time.monotonic() - began:5.0f}s] {text}")

    rows = [Row(n, rounds_at(n, rounds)) for n in sizes]
    say(f"load average {os.getloadavg()[0]:.2f}; in-process render and haproxy -c:")
    with HaproxyChecker(names.ref("haproxy")) as checker:
        for row in rows:
            render_in_process(checker, row)
            say(
                f"  {row.services:,} services: render {ms(row.render_s)}, one change "
                f"{ms(row.render_change_s)}, haproxy -c {ms(row.check_s)}"
            )
    say("the image against a default-limit Consul:")
    with closing(Bench(names, render_wait, say)) as bench:
        bench.start()
        for row in rows:
            say(f"{row.services:,} services x {INSTANCES} instances:")
            bench.fill(row.services)
            try:
                measure(bench, row)
            except (RuntimeError, requests.RequestException, docker.errors.APIError) as exc:
                row.notes.append(f"stopped: {exc}")
                say(f"  {row.services:,}: stopped: {exc}")
    load = os.getloadavg()[0]
    out("")
    for text in table(rows):
        out(text)
    out("")
    out(
        f"Consul 1.8.7 dev agent, default limits; HAPROXY_RENDER_WAIT={render_wait}; one of "
        f"the services is the probe (1 instance); change → routed polls every "
        f"{POLL * 1000:.0f} ms on a new connection. Load average at the end {load:.2f}."
    )
    for row in rows:
        for note in row.notes:
            out(f"- {row.services:,}: {note}")
    out(f"(bench took {time.monotonic() - began:.0f} s)")

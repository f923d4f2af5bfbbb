"""Model and template in this process, as the runtime runs them, and ``haproxy -c`` of the
result with the image's own HAProxy."""

from __future__ import annotations

import time
from pathlib import Path

from consul_lb import model
from consul_lb.consul.catalog import Catalog
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import fit
from consul_lb.render import Renderer
from consul_lb.settings import from_env

from devtools import images
from devtools.bench_scale.catalog import (
    DOMAIN,
    expected_servers,
    service_name,
    synthetic_catalog,
    with_one_more_instance,
)
from devtools.bench_scale.results import Row
from devtools.haproxy_check import HaproxyChecker


def render_in_process(checker: HaproxyChecker, row: Row) -> None:
    """Model and template as the runtime runs them (``Applier.plan``) on an equal catalog:
    its first render of the whole catalog, then the render of one changed service."""
    settings = from_env({"HAPROXY_DOM": DOMAIN})
    catalog = synthetic_catalog(row.services)
    limits = fit(
        settings.maxconn_global,
        settings.maxconn,
        nofile=checker.nofile,
        servers=expected_servers(row.services),
    )
    state = Paths(Path("/var/lib/consul-lb"))
    templates = [images.ROOT / "templates"]

    def started_renderer() -> Renderer:
        # As at the runtime's start: the templates compiled by the render of the empty
        # configuration, no backend section cached yet.
        renderer = Renderer(settings, state.template_paths(), templates)
        renderer.render(model.build(Catalog(), settings)[0], limits, waiting=True)
        return renderer

    best = float("inf")
    for _ in range(3 if row.services <= 1000 else 2):
        renderer, cache = started_renderer(), model.Candidates()
        started = time.perf_counter()
        # No tcp port or route is held: none of these services claims one.
        lb, _ = model.build(catalog, settings, None, cache)
        files = renderer.render(lb, limits)
        best = min(best, time.perf_counter() - started)
    row.render_s = best
    # A change: one more instance of one service, with the warm model cache and renderer
    # of the last round (the runtime keeps both between changes).
    changed = service_name(row.services // 2)
    best = float("inf")
    for k in range(4):
        step = with_one_more_instance(catalog, changed, k) if k % 2 == 0 else catalog
        started = time.perf_counter()
        lb, _ = model.build(step, settings, None, cache)
        renderer.render(lb, limits)
        best = min(best, time.perf_counter() - started)
    row.render_change_s = best
    result = checker.check(files.files(), timeout=300, live=state.live)
    if not result.ok:
        row.notes.append(f"haproxy -c rejected the in-process rendering: {result.alerts[:2]}")
    row.check_s = result.seconds
    row.config_kib = len(files.config.encode()) / 1024

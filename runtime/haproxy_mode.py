"""HAProxy mode: Consul catalog -> model -> haproxy.cfg -> validated -> applied.

Bad input never reaches HAProxy: a service whose tags cannot be published is skipped
with one log line, and a rendered configuration that ``haproxy -c`` rejects is never
installed (the running one keeps serving).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from runtime import model
from runtime.catalog import Catalog
from runtime.consul_config import ConsulConfig
from runtime.haproxy_files import Paths, check, install, read_installed
from runtime.haproxy_process import Haproxy, ReloadError
from runtime.limits import Limits, fit
from runtime.render import HaproxyFiles, render_haproxy
from runtime.settings import Settings
from runtime.watch import CatalogWatcher

log = logging.getLogger("apply")


def render_catalog(
    catalog: Catalog, settings: Settings, limits: Limits, paths: Paths
) -> tuple[HaproxyFiles, model.LoadBalancer, list[str]]:
    lb, problems = model.build(catalog, settings)
    return render_haproxy(lb, settings, limits, paths.template_paths()), lb, problems


@dataclass
class Applier:
    """Applies snapshots; remembers what it reported so that each problem is logged
    once, not once per change."""

    settings: Settings
    limits: Limits
    paths: Paths
    haproxy: Haproxy
    current: HaproxyFiles | None = None
    reported: set[str] = field(default_factory=set)
    failed_validations: int = 0

    def report(self, lines: list[str]) -> None:
        for line in lines:
            if line not in self.reported:
                log.warning("%s", line)
        self.reported = set(lines)

    def apply(self, catalog: Catalog, force: bool = False) -> bool:
        """Render, check and apply; True when HAProxy now runs the new configuration."""
        started = time.monotonic()
        files, lb, problems = render_catalog(catalog, self.settings, self.limits, self.paths)
        self.report(
            [f"skipping service {s.service!r}: {s.reason}" for s in lb.skipped]
            + [f"leaving out {p}" for p in problems]
        )
        if files == self.current and not force and self.haproxy.running():
            log.debug("catalog changed but the configuration did not; nothing to apply")
            return False
        result = check(files)
        if not result.ok:
            self.failed_validations += 1
            log.error(
                "new configuration rejected by haproxy -c, keeping the running one: %s",
                result.message,
            )
            return False
        install(files, self.paths)
        self.current = files
        outcome = self.haproxy.reload()
        took = time.monotonic() - started
        if outcome.ok:
            log.info(
                "applied: %d service(s), %d server(s), %d skipped (%s, %.0f ms)",
                len(lb.backends),
                sum(len(b.servers) for b in lb.backends),
                len(lb.skipped),
                outcome.detail or "reloaded",
                took * 1000,
            )
            return True
        log.error("haproxy reload failed, the previous worker keeps serving: %s", outcome.detail)
        return False


def run(settings: Settings, consul: ConsulConfig) -> int:
    limits = fit(settings.maxconn_global, settings.maxconn)
    log.info("%s", limits.describe(settings.maxconn_global))
    paths = Paths(settings.state_dir)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    haproxy = Haproxy(paths)
    applier = Applier(settings, limits, paths, haproxy, current=read_installed(paths))
    watcher = CatalogWatcher(consul, model.wants)
    stop = threading.Event()
    forced = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP: re-rendering and reloading")
        forced.set()
        watcher.changed.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)

    log.info("watching Consul at %s for services tagged HAPROXY.ENABLE=true", consul.address)
    watcher.start()
    threading.Thread(target=haproxy.watch, args=(stop,), name="haproxy-watch", daemon=True).start()
    for catalog in watcher.changes(settings.render_wait_min, settings.render_wait_max, stop):
        force = forced.is_set()
        forced.clear()
        try:
            applier.apply(catalog, force=force)
        except (ReloadError, OSError) as exc:
            log.error("could not apply the new configuration: %s", exc)
    return drain(haproxy, settings)


def drain(haproxy: Haproxy, settings: Settings) -> int:
    """SIGTERM: fail the health URI first so that upstream balancers and Consul checks
    take this instance out, wait, then let HAProxy finish open connections and exit."""
    if not haproxy.running():
        return 0
    log.info("SIGTERM: health check now fails; draining for %.1fs", settings.drain_seconds)
    try:
        haproxy.set_server_state("consul_lb_health", "serving", "maint")
    except OSError as exc:
        log.warning("could not fail the health check before stopping: %s", exc)
    time.sleep(settings.drain_seconds)
    code = haproxy.soft_stop(timeout=60)
    log.info("haproxy stopped (code %s)", code)
    return 0

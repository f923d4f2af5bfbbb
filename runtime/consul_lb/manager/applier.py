"""HAProxy mode: Consul catalog -> model -> haproxy.cfg -> validated -> applied.

Bad input never reaches HAProxy: a service whose tags cannot be published is skipped
with one log line, and a rendered configuration that ``haproxy -c`` rejects is never
installed (the running one keeps serving).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from consul_lb import model, observe
from consul_lb.consul.catalog import Catalog
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.watch import CatalogWatcher
from consul_lb.haproxy import iptables
from consul_lb.haproxy.files import Paths, check, install, read_installed
from consul_lb.haproxy.limits import Limits, fit
from consul_lb.haproxy.process import Haproxy, ReloadError, make
from consul_lb.haproxy.runtime_api import RuntimeApi, RuntimeApiError, server_only_changes
from consul_lb.render import HaproxyFiles, render_haproxy
from consul_lb.settings import Settings

log = logging.getLogger("apply")


def render_lb(
    lb: model.LoadBalancer, settings: Settings, limits: Limits, paths: Paths
) -> HaproxyFiles:
    return render_haproxy(lb, settings, limits, paths.template_paths())


def render_catalog(
    catalog: Catalog, settings: Settings, limits: Limits, paths: Paths
) -> tuple[HaproxyFiles, model.LoadBalancer, list[str]]:
    lb, problems = model.build(catalog, settings)
    return render_lb(lb, settings, limits, paths), lb, problems


def without(lb: model.LoadBalancer, reasons: dict[str, str]) -> model.LoadBalancer:
    """``lb`` with the named services moved to the skipped list."""
    return model.LoadBalancer(
        tuple(b for b in lb.backends if b.service not in reasons),
        tuple(
            sorted(
                [*lb.skipped, *(model.Skipped(name, why) for name, why in reasons.items())],
                key=lambda s: s.service,
            )
        ),
    )


def port_free(port: int) -> bool:
    """Whether a new tcp frontend could bind ``port`` here. haproxy -c does not bind, and a
    port taken by another program (with host networking, any program on the host) would
    make every later reload fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@dataclass
class Applier:
    """Applies snapshots; remembers what it reported so that each problem is logged
    once, not once per change."""

    settings: Settings
    limits: Limits
    paths: Paths
    haproxy: Haproxy
    current: HaproxyFiles | None = None
    applied: model.LoadBalancer | None = None
    reported: set[str] = field(default_factory=set)
    failed_validations: int = 0
    reloads: int = 0
    failed_reloads: int = 0
    renders: int = 0
    last_render_seconds: float = 0.0
    # Changes applied, by path: "runtime_api" (no reload) or "reload".
    runtime_api_changes: int = 0
    reload_changes: int = 0
    runtime_api_fallbacks: int = 0
    api: RuntimeApi | None = None

    def __post_init__(self) -> None:
        self.api = RuntimeApi(self.haproxy.admin, self.settings.server_drain_timeout)

    def report(self, lines: list[str]) -> None:
        for line in lines:
            if line not in self.reported:
                log.warning("%s", line)
        self.reported = set(lines)

    def taken_ports(self, lb: model.LoadBalancer) -> dict[str, str]:
        ours = set(frontend_ports(self.applied, self.settings)) if self.applied else set()
        return {
            b.service: f"HAPROXY.FRONTEND.PORT={b.frontend_port} is in use by another program"
            for b in lb.tcp_backends
            if b.frontend_port is not None
            and b.frontend_port not in ours
            and not port_free(b.frontend_port)
        }

    def isolate(self, lb: model.LoadBalancer) -> model.LoadBalancer | None:
        """The new configuration failed haproxy -c: try each changed service alone on top
        of the last good configuration, leave out those that fail, and check again."""
        good = {b.service: b for b in self.applied.backends} if self.applied else {}
        changed = [b for b in lb.backends if good.get(b.service) != b]
        culprits: dict[str, str] = {}
        for backend in changed:
            trial = model.LoadBalancer(
                tuple(
                    sorted(
                        [*(b for n, b in good.items() if n != backend.service), backend],
                        key=lambda b: b.service,
                    )
                ),
                (),
            )
            result = check(render_lb(trial, self.settings, self.limits, self.paths))
            if not result.ok:
                culprits[backend.service] = (
                    f"haproxy -c rejects its configuration: {result.message}"
                )
        if not culprits:
            return None
        narrowed = without(lb, culprits)
        if not check(render_lb(narrowed, self.settings, self.limits, self.paths)).ok:
            return None
        return narrowed

    def apply(self, catalog: Catalog, force: bool = False) -> bool:
        """Render, check and apply; True when HAProxy now runs the new configuration."""
        try:
            return self._apply(catalog, force)
        finally:
            self.write_state()

    def write_state(self) -> None:
        """What the load balancer does now, for operators and tests: state.json in the
        state directory (counters, published and skipped services)."""
        tmp = self.paths.state_dir / ".state.json.tmp"
        tmp.write_text(json.dumps(self.state(), indent=2, sort_keys=True) + "\n")
        tmp.replace(self.paths.state_dir / "state.json")

    def state(self) -> dict[str, Any]:
        """Counters, published and skipped services: state.json and the state endpoint."""
        lb = self.applied
        return {
            "strategy": self.haproxy.strategy,
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "failed_validations": self.failed_validations,
            "runtime_api_changes": self.runtime_api_changes,
            "reload_changes": self.reload_changes,
            "runtime_api_fallbacks": self.runtime_api_fallbacks,
            "updated": time.time(),
            "services": [b.service for b in lb.backends] if lb else [],
            "skipped": [{"service": s.service, "reason": s.reason} for s in lb.skipped]
            if lb
            else [],
        }

    def fit_limits(self, lb: model.LoadBalancer) -> None:
        """Connection limits for this many servers; said once each time they change."""
        servers = sum(len(b.servers) for b in lb.backends)
        limits = fit(self.settings.maxconn_global, self.settings.maxconn, servers=servers)
        if limits != self.limits:
            say = log.info if limits.checks else log.warning
            say("%s (%d servers)", limits.describe(self.settings.maxconn_global), servers)
            self.limits = limits
        if self.api is not None:
            self.api.checks = limits.checks

    def apply_servers(self, lb: model.LoadBalancer, files: HaproxyFiles, started: float) -> bool:
        """Apply a server-only change through the runtime API; False when the change
        needs a reload (structural, or a command failed: the reload then sets it right)."""
        if not (self.settings.runtime_api and self.applied and self.api and self.haproxy.running()):
            return False
        changes = server_only_changes(self.applied, lb)
        if changes is None:
            return False
        try:
            with self.haproxy.lock:
                added, drained = self.api.apply(changes)
        except (RuntimeApiError, OSError) as exc:
            self.runtime_api_fallbacks += 1
            log.warning("runtime API change failed, reloading instead: %s", exc)
            return False
        # The file follows what runs, so that a later reload starts from the same state.
        install(files, self.paths)
        self.current, self.applied = files, lb
        self.runtime_api_changes += 1
        log.info(
            "applied: %d service(s), %d server(s), %d skipped "
            "(runtime API: +%d server(s), %d draining, no reload, %.0f ms)",
            len(lb.backends),
            sum(len(b.servers) for b in lb.backends),
            len(lb.skipped),
            added,
            drained,
            (time.monotonic() - started) * 1000,
        )
        return True

    def sweep(self) -> None:
        """Finish drains (called periodically)."""
        if self.api is None or not self.api.draining:
            return
        try:
            with self.haproxy.lock:
                if self.haproxy.running():
                    self.api.sweep()
        except (RuntimeApiError, OSError) as exc:
            log.warning("finishing server drains: %s", exc)

    def _apply(self, catalog: Catalog, force: bool) -> bool:
        started = time.monotonic()
        lb, problems = model.build(catalog, self.settings)
        lb = without(lb, self.taken_ports(lb))
        self.fit_limits(lb)
        files = render_lb(lb, self.settings, self.limits, self.paths)
        self.renders += 1
        self.last_render_seconds = time.monotonic() - started
        if files == self.current and not force and self.haproxy.running():
            self.report_lb(lb, problems)
            log.debug("catalog changed but the configuration did not; nothing to apply")
            return False
        # A server-only change keeps the structure of the running, checked configuration
        # and its servers passed the model's checks: no haproxy -c on this path.
        if not force and self.apply_servers(lb, files, started):
            self.report_lb(lb, problems)
            return True
        result = check(files)
        if not result.ok:
            self.failed_validations += 1
            narrowed = self.isolate(lb)
            if narrowed is None:
                self.report_lb(lb, problems)
                log.error(
                    "new configuration rejected by haproxy -c, keeping the running one: %s",
                    result.message,
                )
                return False
            lb = narrowed
            files = render_lb(lb, self.settings, self.limits, self.paths)
        self.report_lb(lb, problems)
        previous = self.current
        install(files, self.paths)
        outcome = self.haproxy.reload(frontend_ports(lb, self.settings))
        if self.api is not None:
            self.api.forget()
        took = time.monotonic() - started
        if outcome.detail != "started":
            self.reloads += 1
        if not outcome.ok:
            self.failed_reloads += 1
            log.error(
                "haproxy reload failed, the previous process keeps serving: %s", outcome.detail
            )
            if previous is not None:
                # So that a restart or the next reload starts from what is running.
                install(previous, self.paths)
            return False
        self.current, self.applied = files, lb
        self.reload_changes += 1
        log.info(
            "applied: %d service(s), %d server(s), %d skipped (%s, %.0f ms)",
            len(lb.backends),
            sum(len(b.servers) for b in lb.backends),
            len(lb.skipped),
            outcome.detail or f"{self.haproxy.strategy} reload",
            took * 1000,
        )
        return True

    def report_lb(self, lb: model.LoadBalancer, problems: list[str]) -> None:
        self.report(
            [f"skipping service {s.service!r}: {s.reason}" for s in lb.skipped]
            + [f"leaving out {p}" for p in problems]
        )


def frontend_ports(lb: model.LoadBalancer, settings: Settings) -> list[int]:
    ports = [settings.http_port, settings.stats_port]
    return ports + [b.frontend_port for b in lb.tcp_backends if b.frontend_port is not None]


def run(settings: Settings, consul: ConsulConfig) -> int:
    limits = fit(settings.maxconn_global, settings.maxconn)
    log.info("%s", limits.describe(settings.maxconn_global))
    paths = Paths(settings.state_dir)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    haproxy = make(settings.reload_strategy, paths)
    try:
        haproxy.prepare()
    except iptables.IptablesError as exc:
        log.error("%s", exc)
        return 2
    log.info("reload strategy: %s", settings.reload_strategy)
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
    observe.serve(applier, watcher, paths)
    watcher.start()
    threading.Thread(target=haproxy.watch, args=(stop,), name="haproxy-watch", daemon=True).start()

    def sweep_loop() -> None:
        while not stop.wait(0.5):
            applier.sweep()

    threading.Thread(target=sweep_loop, name="drain-sweep", daemon=True).start()
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
        haproxy.admin("set server consul_lb_health/serving state maint")
    except OSError as exc:
        log.warning("could not fail the health check before stopping: %s", exc)
    time.sleep(settings.drain_seconds)
    code = haproxy.soft_stop(timeout=60)
    log.info("haproxy stopped (code %s)", code)
    return 0

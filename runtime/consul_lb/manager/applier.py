"""Catalog snapshot -> model -> rendered files -> checked -> applied to HAProxy.

Called only by the manager loop, one change at a time. Bad input never reaches HAProxy:
a service whose tags cannot be published is skipped with one log line; a configuration
that cannot be rendered or that ``haproxy -c`` rejects is narrowed down to the services
that cause it (by bisection), those are left out, and the rest is applied; the running
configuration keeps serving meanwhile.

A change reaches HAProxy by the runtime API, with no reload, when the new rendering
differs from the running one in server lines and maps alone; otherwise by a reload,
after the server-state file has been reconciled with the new configuration.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from consul_lb import model
from consul_lb.consul.catalog import Catalog
from consul_lb.haproxy import server_state
from consul_lb.haproxy.files import Paths, Validation, check, install
from consul_lb.haproxy.limits import Limits, fit
from consul_lb.haproxy.process import Haproxy, ReloadError
from consul_lb.haproxy.runtime_api import RuntimeApi, RuntimeApiError, server_only_changes
from consul_lb.manager import isolate
from consul_lb.manager.counters import Counters, state
from consul_lb.manager.plan import TEMPLATE_FAILS, Plan, reason, summary, warnings
from consul_lb.manager.ports import frontend_ports, taken_ports
from consul_lb.maps import DRAINING, HEALTH_MAP, ORDERED_MAPS
from consul_lb.model.claims import Holders
from consul_lb.render import HaproxyFiles, Renderer, server_tls
from consul_lb.settings import Settings

log = logging.getLogger("apply")


@dataclass
class Timeline:
    """When each stage of one change happened, as Unix times (``time.time()``, 0.0: not
    reached): where the time between a Consul change and HAProxy serving it goes. Shown
    as ``last_change`` in the state; ``invoke bench scale`` reads it."""

    changed: float = 0.0  # the watcher's first change of the burst reached the loop
    snapshot: float = 0.0  # the debounce ended; the catalog snapshot was taken
    rendered: float = 0.0  # model and template done
    commands: float = 0.0  # runtime-API commands done (runtime API path only)
    applied: float = 0.0  # HAProxy runs it: files installed (runtime API) or reloaded
    path: str = ""  # "runtime_api" or "reload"


@dataclass
class Applier:
    """Applies snapshots; remembers what it reported so that each problem is logged
    once, not once per change."""

    settings: Settings
    paths: Paths
    haproxy: Haproxy
    renderer: Renderer
    limits: Limits = field(default_factory=lambda: Limits(0, 0, 0, False))
    said_limits: Limits | None = None  # the limits last logged
    current: HaproxyFiles | None = None  # what HAProxy runs
    applied: model.LoadBalancer | None = None
    counters: Counters = field(default_factory=Counters)
    reported: set[str] = field(default_factory=set)
    cache: model.Candidates = field(default_factory=model.Candidates)
    timeline: Timeline = field(default_factory=Timeline)  # of the change being applied
    api: RuntimeApi = field(init=False)

    def __post_init__(self) -> None:
        self.api = RuntimeApi(self.haproxy.admin, self.settings.server_drain_timeout)
        self.api.server_tls = server_tls(self.settings.tls.backend_ca_file)

    # -- planning (also the dry run) --------------------------------------------------
    def plan(self, catalog: Catalog, waiting: bool = False) -> Plan:
        """Model, port probe, limits and render, as a reload would install them (no
        check). Raises what the template raises."""
        started = time.monotonic()
        lb, problems = model.build(catalog, self.settings, Holders.of(self.applied), self.cache)
        lb = lb.without(taken_ports(lb, self.applied, self.current))
        limits = self.fit_limits(lb, say=not waiting)
        files = self.renderer.render(lb, limits, waiting)
        self.counters.renders += 1
        self.counters.last_render_seconds = time.monotonic() - started
        self.timeline.rendered = time.time()
        return Plan(lb, problems, files, limits)

    def checked(self, plan: Plan) -> Plan | None:
        """``plan`` once ``haproxy -c`` accepts it: as it is, or without the services
        that make it fail (found by bisection). None when nothing acceptable is left."""
        result = self.validate(plan.files)
        if result.ok:
            return plan
        self.counters.failed_validations += 1
        bad = isolate.culprits(self.applied, plan.lb, self.trial, result.message)
        if not bad:
            log.error(
                "new configuration rejected by haproxy -c, keeping the running one: %s",
                result.message,
            )
            return None
        lb = plan.lb.without({name: reason(why) for name, why in bad.items()})
        narrowed = Plan(lb, plan.problems, self.renderer.render(lb, plan.limits), plan.limits)
        return narrowed if self.validate(narrowed.files).ok else None

    def trial(self, lb: model.LoadBalancer) -> Validation:
        """Render and check ``lb`` (for the bisection)."""
        try:
            files = self.renderer.render(lb, self.limits)
        except Exception as exc:  # an operator's template may raise anything
            return Validation(False, f"{TEMPLATE_FAILS}{type(exc).__name__}: {exc}")
        return self.validate(files)

    def validate(self, files: HaproxyFiles) -> Validation:
        """``haproxy -c`` on ``files`` as they would be installed."""
        return check(files, self.paths.live)

    def fit_limits(self, lb: model.LoadBalancer, say: bool = True) -> Limits:
        """Connection limits for this many servers; logged each time they change (not
        for the empty configuration HAProxy starts with before Consul is read: the first
        line is the one that runs)."""
        servers = sum(len(b.servers) for b in lb.backends)
        limits = fit(self.settings.maxconn_global, self.settings.maxconn, servers=servers)
        if say and limits != self.said_limits:
            (log.info if limits.checks else log.warning)(
                "%s", limits.describe(self.settings.maxconn_global)
            )
            self.said_limits = limits
        self.limits = limits
        self.api.checks = limits.checks
        return limits

    def report(self, plan: Plan) -> None:
        lines = warnings(plan, self.settings)
        for line in lines:
            if line not in self.reported:
                log.warning("%s", line)
        self.reported = set(lines)

    # -- applying ---------------------------------------------------------------------
    def apply(self, catalog: Catalog, force: bool = False, waiting: bool = False) -> str:
        """Render, check and apply; says what happened: "unchanged", "runtime_api",
        "reload" or "rejected". Raises on an unexpected failure (the loop contains it)."""
        started = time.monotonic()
        try:
            plan = self.plan(catalog, waiting)
        except Exception as exc:
            # The template raises for some service: find which, as for haproxy -c.
            self.counters.failed_validations += 1
            plan = self._plan_without_render_errors(catalog, waiting, exc)
        self.report(plan)
        running = self.haproxy.running()
        if plan.files == self.current and not force and running:
            log.debug("catalog changed but the configuration did not; nothing to apply")
            return "unchanged"
        if not force and running and self.apply_live(plan, started):
            return "runtime_api"
        checked = self.checked(plan)
        if checked is None:
            return "rejected"
        if checked is not plan:
            self.report(checked)
        return "reload" if self.reload(checked, started) else "rejected"

    def _plan_without_render_errors(self, catalog: Catalog, waiting: bool, exc: Exception) -> Plan:
        lb, problems = model.build(catalog, self.settings, Holders.of(self.applied), self.cache)
        bad = isolate.culprits(
            self.applied, lb, self.trial, f"{TEMPLATE_FAILS}{type(exc).__name__}: {exc}"
        )
        if not bad:
            raise exc
        lb = lb.without({n: reason(why) for n, why in bad.items()})
        return Plan(lb, problems, self.renderer.render(lb, self.limits, waiting), self.limits)

    def apply_live(self, plan: Plan, started: float) -> bool:
        """Apply a change through the runtime API when only servers and maps differ;
        False when it needs a reload (or a command failed: the reload sets it right)."""
        current = self.current
        if not (self.settings.runtime_api and current and self.applied):
            return False
        if plan.files.structure() != current.structure():
            return False
        changes = server_only_changes(self.applied, plan.lb)
        if changes is None:
            return False
        try:
            added, changed, drained = self.api.apply(changes)
            for name, new in plan.files.maps.items():
                old = current.maps.get(name, "")
                if old != new:
                    path = str(self.paths.live / name)
                    if name in ORDERED_MAPS:
                        self.api.replace_map(path, new)
                    else:
                        self.api.set_map(path, old, new)
        except (RuntimeApiError, OSError) as exc:
            self.counters.runtime_api_fallbacks += 1
            log.warning("runtime API change failed, reloading instead: %s", exc)
            return False
        self.timeline.commands = time.time()
        # The files follow what runs, so that a later reload starts from the same state.
        install(plan.files, self.paths)
        self.timeline.applied, self.timeline.path = time.time(), "runtime_api"
        self.current, self.applied = plan.files, plan.lb
        self.counters.runtime_api_changes += 1
        log.info(
            "applied: %s (runtime API, no reload: %d added, %d changed, %d draining; %.0f ms)",
            summary(plan.lb),
            added,
            changed,
            drained,
            (time.monotonic() - started) * 1000,
        )
        return True

    def reload(self, plan: Plan, started: float) -> bool:
        previous = self.current
        self.save_server_state(plan.lb)
        install(plan.files, self.paths)
        try:
            outcome = self.haproxy.reload(frontend_ports(plan.lb, self.settings))
        except ReloadError as exc:
            outcome_ok, detail = False, str(exc)
        else:
            outcome_ok, detail = outcome.ok, outcome.detail
            if detail != "started":
                self.counters.reloads += 1
        if not outcome_ok:
            self.counters.failed_reloads += 1
            log.error("haproxy reload failed, the previous process keeps serving: %s", detail)
            if previous is not None:
                # So that a restart or the next reload starts from what is running.
                install(previous, self.paths)
            return False
        # The new process has none of the servers being drained; the old one finishes
        # their connections on its own.
        self.api.forget()
        self.timeline.applied, self.timeline.path = time.time(), "reload"
        self.current, self.applied = plan.files, plan.lb
        self.counters.reload_changes += 1
        self.counters.last_reload = time.time()
        log.info(
            "applied: %s (%s; %.0f ms)",
            summary(plan.lb),
            detail or f"{self.haproxy.strategy} reload",
            (time.monotonic() - started) * 1000,
        )
        return True

    def save_server_state(self, lb: model.LoadBalancer) -> None:
        """Write the server-state file the next process loads: what the running one
        knows, minus what contradicts ``lb`` (see haproxy/server_state.py)."""
        try:
            if self.haproxy.running():
                state = self.haproxy.admin("show servers state")
            else:
                state = self.paths.server_state.read_text()
        except OSError as exc:
            log.warning("could not read the server state before reloading: %s", exc)
            state = ""
        text = server_state.reconcile(state, lb, self.api.draining.keys())
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.server_state.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.paths.server_state)

    def restart(self) -> None:
        """Start HAProxy again on the installed files (after it died)."""
        if self.applied is not None:
            self.save_server_state(self.applied)
        self.api.forget()
        self.haproxy.start()
        self.haproxy.restarts += 1

    def sweep(self) -> bool:
        """Finish drains; True while servers are still draining."""
        if self.api.draining and self.haproxy.running():
            self.api.sweep()
        return bool(self.api.draining)

    def fail_health(self) -> None:
        """SIGTERM: make the health URI fail (no reload)."""
        if self.current is None:
            return
        health = self.current.health_map
        self.api.set_map(str(self.paths.live / HEALTH_MAP), health, health + f"{DRAINING} 1\n")

    def state(self) -> dict[str, object]:
        """Counters, published and skipped services (state.json and the state endpoint)."""
        return state(self.haproxy.strategy, self.counters, self.applied)

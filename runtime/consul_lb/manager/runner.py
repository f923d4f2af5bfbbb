"""HAProxy mode: the event loop that owns the load balancer.

Events (see loop.py): the watcher's changes, debounced (consul-template's ``wait``);
SIGHUP (re-render and reload); SIGTERM/SIGINT (fail the health URI, wait, soft-stop);
HAProxy's main process exiting (restart with backoff); timers for drains, retries and
the periodic resync. Only this loop touches the applier, the runtime-API bookkeeping,
the server-state file and the supervisor. An exception while handling one event is
logged (once per distinct error) and counted, and the change is tried again later;
the running configuration keeps serving.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import cast

from consul_lb.acme.worker import Acme
from consul_lb.consul.catalog import Catalog
from consul_lb.consul.catalog_watch import CatalogWatcher
from consul_lb.consul.client import ConsulClient
from consul_lb.consul.config import ConsulConfig
from consul_lb.haproxy.files import Paths, install, read_installed
from consul_lb.haproxy.iptables import IptablesError
from consul_lb.haproxy.process import Haproxy, ReloadError, make
from consul_lb.manager.applier import Applier, Timeline
from consul_lb.manager.loop import CHANGED, HAPROXY_EXITED, RELOAD, STOP, Event, EventLoop
from consul_lb.manager.report import Report
from consul_lb.maps import HEALTH_MAP
from consul_lb.model import LoadBalancer, watched
from consul_lb.observe.endpoints import Observer, start_server
from consul_lb.render import HaproxyFiles, Renderer
from consul_lb.settings import Settings
from consul_lb.tls.manager import Tls

log = logging.getLogger("manager")

DRAIN_TICK = 0.5  # seconds between two looks at draining servers
RETRY_MAX = 60.0  # longest pause before a failed change is tried again
CERTS = "certs"  # a certificate source changed (consul_lb/tls/sources.py)


class StartError(RuntimeError):
    """The load balancer cannot start with this configuration (exit code 2)."""


def backoff(failures: int, low: float = 0.5, high: float = RETRY_MAX) -> float:
    return min(high, low * 2.0 ** max(0, failures - 1))


class Runner:
    def __init__(
        self, settings: Settings, consul: ConsulConfig, haproxy: Haproxy | None = None
    ) -> None:
        self.settings = settings
        self.loop = EventLoop()
        self.paths = Paths(settings.state_dir)
        self.haproxy = haproxy or make(settings.reload_strategy, self.paths)
        self.haproxy.on_exit = lambda pid, code: self.loop.post(Event(HAPROXY_EXITED, (pid, code)))
        self.renderer = Renderer(settings, self.paths.template_paths(), settings.templates)
        self.applier = Applier(settings, self.paths, self.haproxy, self.renderer)
        self.client = ConsulClient(consul, settings.common.max_conns, settings.common.max_stale)
        self.watcher = CatalogWatcher(
            self.client, watched(settings), lambda: self.loop.post(Event(CHANGED))
        )
        self.watcher.outage.context = self.outage_context
        self.tls = Tls(
            settings,
            self.haproxy,
            lambda view: setattr(self.renderer, "tls", view),
            self.client,
            lambda: self.loop.post(Event(CERTS)),
            self.watcher.outage,
        )
        # Orders and renews ACME certificates on its own thread (HAPROXY_ACME_DIRECTORY).
        self.acme = Acme(settings, self.client, self.watcher.outage)
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self.waiting = True  # until the first complete read of Consul
        self.force = False
        self.burst: float | None = None  # when the current burst of changes began
        self.burst_time = 0.0  # the same, as a Unix time (for the Timeline)
        self.last_change: Timeline | None = None  # stages of the last change applied
        self.failures = {"apply": 0, "restart": 0}
        self.stopping = False
        self.report = Report(self)

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        """Start HAProxy before Consul answers: the health URI says it waits. Raises
        StartError for what no later change can fix."""
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        self.haproxy.prepare()
        self.tls.prepare()  # certificates already in the directory: HTTPS from the start
        try:
            plan = self.applier.plan(Catalog(), waiting=True)
        except Exception as exc:
            raise StartError(f"CONSUL_LB_TEMPLATES: the template fails: {exc}") from exc
        result = self.applier.validate(plan.files)
        if not result.ok:
            raise StartError(
                f"haproxy -c rejects the configuration for no service: {result.message}"
            )
        files: HaproxyFiles = plan.files
        lb: LoadBalancer | None = plan.lb
        installed = read_installed(self.paths)
        if (
            installed is not None
            and installed.config != files.config
            and self.applier.validate(installed).ok
        ):
            # A restart: serve what ran before until Consul has been read again (what
            # it publishes is not known here: the first change reloads).
            files = installed.with_map(HEALTH_MAP, plan.files.health_map)
            lb = None
        install(files, self.paths)
        try:
            self.haproxy.start()
        except (ReloadError, OSError) as exc:
            raise StartError(f"haproxy does not start: {exc} (see its messages above)") from exc
        self.applier.current, self.applier.applied = files, lb
        self.applier.counters.last_reload = time.time()
        self.tls.settle("reload")

    def outage_context(self) -> str:
        if self.applier.applied is None:
            return (
                "nothing is published yet: the health URI answers 503 until Consul has "
                "been read; retrying with backoff"
            )
        return "HAProxy keeps serving the last good configuration; retrying with backoff"

    # -- the loop ---------------------------------------------------------------------
    def install_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.loop.post(Event(STOP))

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.loop.post(Event(RELOAD))

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def run_loop(self) -> None:
        self.watcher.start()
        self.tls.start()
        self.acme.start()
        if self.settings.resync_interval > 0:
            self.loop.after("resync", self.settings.resync_interval)
        while not self.stopping:
            event = self.loop.next()
            if event is None:
                continue
            try:
                self.handle(event)
            except Exception as exc:  # contained: the running configuration keeps serving
                self.failed("event", exc)
            # Not while changes come in, nor while waiting for the first read: state.json
            # is rewritten whole, and at 5,000 services that is not free.
            if event.kind != CHANGED and not (
                event.kind == "render" and self.loop.pending("render")
            ):
                self.report.write_state()

    def handle(self, event: Event) -> None:
        kind = event.kind
        if kind == CHANGED:
            now = self.loop.clock()
            if self.burst is None:
                self.burst, self.burst_time = now, time.time()
            s = self.settings
            self.loop.after(
                "render", min(now + s.render_wait_min, self.burst + s.render_wait_max) - now
            )
        elif kind in ("render", "retry"):
            self.render()
        elif kind == RELOAD:
            log.info("SIGHUP: re-rendering and reloading")
            self.force = True
            self.loop.after("render", 0)
        elif kind == STOP:
            self.stopping = True
        elif kind == HAPROXY_EXITED:
            pid, code = cast(tuple[int, int], event.detail)
            if pid == self.haproxy.pid and not self.stopping:
                delay = backoff(self.failures["restart"] + 1)
                log.error("haproxy exited unexpectedly (code %s); restarting in %.1fs", code, delay)
                self.loop.after("restart", delay)
        elif kind == "restart":
            self.restart()
        elif kind == "drain":
            if self.applier.sweep():
                self.loop.after("drain", DRAIN_TICK)
        elif kind == CERTS:
            # A burst (a bundle and its key written one after the other) is one change.
            self.loop.after("apply-certs", self.settings.render_wait_min)
            self.acme.certificates_changed()
        elif kind == "apply-certs":
            self.apply_certs()
        elif kind == "resync":
            self.watcher.resync()
            self.loop.after("resync", self.settings.resync_interval)

    def render(self) -> None:
        if not self.watcher.ready():
            self.loop.after("render", 0.05)
            return
        changed = self.burst_time if self.burst is not None else 0.0
        self.burst = None
        force, self.force = self.force, False
        try:
            catalog = self.watcher.snapshot()
            self.applier.timeline = Timeline(changed=changed, snapshot=time.time())
            outcome = self.applier.apply(catalog, force=force)
        except Exception as exc:
            self.force = self.force or force
            self.failures["apply"] += 1
            delay = backoff(self.failures["apply"])
            self.failed("apply", exc, f"trying again in {delay:.1f}s")
            self.loop.after("retry", delay)
            return
        self.failures["apply"] = 0
        if outcome in ("runtime_api", "reload"):
            self.last_change = self.applier.timeline
        if self.waiting and outcome in ("runtime_api", "reload", "unchanged"):
            self.waiting = False
            missing = self.watcher.missing()
            if missing:
                log.warning(
                    "first read of Consul incomplete: %d service(s) could not be read "
                    "(%s); published the rest, they follow when readable",
                    len(missing),
                    ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
                )
        if self.applier.api.draining and not self.loop.pending("drain"):
            self.loop.after("drain", DRAIN_TICK)
        self.tls.settle(outcome)
        self.tls.report_backends(self.applier.applied)
        self.acme.want(self.applier.applied)

    def apply_certs(self) -> None:
        """Certificates changed: through the runtime API, or a render when haproxy.cfg
        changes with them (the first certificate, the last, another default)."""
        then = self.tls.apply()
        if then == "force":
            self.force = True
        if then in ("render", "force"):
            self.loop.after("render", 0)

    def restart(self) -> None:
        try:
            self.applier.restart()
        except (ReloadError, OSError) as exc:
            self.failures["restart"] += 1
            delay = backoff(self.failures["restart"] + 1)
            self.failed("restart", exc, f"trying again in {delay:.1f}s")
            self.loop.after("restart", delay)
            return
        self.failures["restart"] = 0

    def failed(self, stage: str, exc: BaseException, then: str = "") -> None:
        """Count a contained failure; log it when it differs from the last one."""
        self.errors[stage] = self.errors.get(stage, 0) + 1
        line = f"{stage} failed: {type(exc).__name__}: {exc}"
        if line != self.last_error:
            log.error("%s%s", line, f"; {then}" if then else "", exc_info=exc)
            self.last_error = line

    # -- stop -------------------------------------------------------------------------
    def drain(self) -> int:
        """SIGTERM: fail the health URI first so that upstream balancers and Consul checks
        take this instance out, wait, then let HAProxy finish open connections and exit."""
        self.watcher.stop()
        self.tls.stop()
        self.acme.stop()
        if not self.haproxy.running():
            return 0
        log.info("SIGTERM: health check now fails; draining for %.1fs", self.settings.drain_seconds)
        try:
            self.applier.fail_health()
        except Exception as exc:  # still stop, and say why the health URI did not fail
            log.warning("could not fail the health check before stopping: %s", exc)
        time.sleep(self.settings.drain_seconds)
        code = self.haproxy.soft_stop(timeout=60)
        log.info("haproxy stopped (code %s)", code)
        return 0

    def serve_endpoints(self) -> None:
        """The metrics and state endpoints; a port another program holds is a start
        error (HAProxy would forward the stats port's paths to that program)."""
        observer = Observer(self.report.sources())
        port = self.settings.runtime_port
        try:
            start_server(observer, port)
        except OSError as exc:
            raise StartError(
                f"HAPROXY_RUNTIME_PORT: cannot listen on 127.0.0.1:{port} ({exc.strerror}): "
                "another program holds it; set HAPROXY_RUNTIME_PORT to a free port"
            ) from exc
        log.info("metrics and state endpoints on 127.0.0.1:%d, behind the stats port", port)


def run(settings: Settings, consul: ConsulConfig) -> int:
    """The load balancer until SIGTERM; the process's exit code."""
    runner = Runner(settings, consul)
    runner.install_signals()
    try:
        runner.serve_endpoints()
        log.info("reload strategy: %s", settings.reload_strategy)
        runner.start()
    except (StartError, IptablesError) as exc:
        log.error("%s", exc)
        return 2
    log.info("watching Consul at %s for services tagged HAPROXY.ENABLE=true", consul.address)
    runner.report.write_state()
    runner.run_loop()
    return runner.drain()

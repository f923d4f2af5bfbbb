"""Template mode's two ways to run: ``--once`` (read, render, write, run commands, exit)
and watching (render on every change, supervise the ``--exec`` child).

Watching is an event loop, as in HAProxy mode: the watchers post changes, signal
handlers post signals, the child's exit is posted by its waiter thread, and one loop
renders, writes and reloads the child.
"""

from __future__ import annotations

import argparse
import logging
import random
import shlex
import signal
import sys
from types import FrameType
from typing import cast

from consul_lb.child import Process
from consul_lb.consul.catalog import Catalog
from consul_lb.consul.catalog_watch import CatalogWatcher
from consul_lb.consul.client import ConsulClient, ConsulError
from consul_lb.consul.kv import KVWatcher, read_keys
from consul_lb.manager.loop import CHANGED, RELOAD, STOP, Event, EventLoop
from consul_lb.template.args import ExecOptions
from consul_lb.template.renderer import Renderer, run_command

log = logging.getLogger("template")

# A template may only learn of a key once it has the value of another one (conditional
# lookups); --once reads keys in rounds until nothing new is asked for, with a bound so
# that a template computing ever-new key names cannot loop forever.
MAX_ONCE_ROUNDS = 16
CHILD_EXITED = "child-exited"
FORWARD = "forward"  # SIGUSR1/SIGUSR2 for the child
CONSUL_HINT = "check CONSUL_HTTP_ADDR (and CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT)"


def all_services(name: str, tags: tuple[str, ...]) -> bool:
    """Template mode watches every service: any template may ask for any of them."""
    return True


def check_combinations(args: argparse.Namespace) -> str | None:
    if args.exec_command and args.once:
        return "--once renders and exits; it cannot be combined with --exec"
    if args.exec_command and args.dry:
        return "--dry writes no files, so there is nothing to --exec on"
    return None


def exec_options(args: argparse.Namespace) -> ExecOptions | None:
    if not args.exec_command:
        return None
    return ExecOptions(
        command=args.exec_command,
        reload_signal=args.exec_reload_signal,
        kill_signal=args.exec_kill_signal or signal.SIGTERM,
        kill_timeout=args.exec_kill_timeout,
        splay=args.exec_splay,
    )


def run(args: argparse.Namespace, client: ConsulClient) -> int:
    problem = check_combinations(args)
    if problem:
        print(f"consul-lb template: {problem}", file=sys.stderr)
        return 2
    renderer = Renderer(args.templates, dry=args.dry, backup=args.backup)
    if args.once:
        try:
            return run_once(renderer, client, args.command_timeout)
        except (ConsulError, TimeoutError) as exc:
            print(
                f"consul-lb template: cannot read Consul at {client.config.address}: {exc}; "
                f"{CONSUL_HINT}",
                file=sys.stderr,
            )
            return 1
    return Watching(renderer, client, args, exec_options(args)).run()


def run_once(renderer: Renderer, client: ConsulClient, command_timeout: float) -> int:
    """Read the catalog and the keys the templates ask for (in rounds: a key may be asked
    for only once another one is known), render, write, run the commands."""
    catalog = CatalogWatcher(client, all_services, lambda: None).read_once()
    kv: dict[str, str | None] = {}
    outcome = renderer.render(catalog, kv)
    for _ in range(MAX_ONCE_ROUNDS):
        if not outcome.missing:
            break
        kv.update(read_keys(client, outcome.missing))
        outcome = renderer.render(catalog, kv)
    if not outcome.complete:
        for r in outcome.rendered:
            if not r.ready:
                reason = r.error or "KV key(s) missing: " + ", ".join(sorted(r.absent | r.missing))
                print(f"consul-lb template: {r.spec.name}: {reason}", file=sys.stderr)
        return 1
    if renderer.store(outcome):
        return 1
    if renderer.dry:
        return 0
    failed = [c for c in outcome.commands() if not run_command(c, command_timeout)]
    return 1 if failed else 0


class Watching:
    """The long-running mode: watch, render on change, run commands, supervise the child."""

    def __init__(
        self,
        renderer: Renderer,
        client: ConsulClient,
        args: argparse.Namespace,
        options: ExecOptions | None,
    ) -> None:
        self.renderer = renderer
        self.client = client
        self.wait_min, self.wait_max = args.wait
        self.command_timeout: float = args.command_timeout
        self.loop = EventLoop()
        changed = lambda: self.loop.post(Event(CHANGED))  # noqa: E731
        self.catalog = CatalogWatcher(client, all_services, changed)
        self.catalog.outage.context = self.outage_context
        # KV changes wake the same debounce as catalog changes.
        self.kv = KVWatcher(client, changed, outage=self.catalog.outage)
        self.options = options
        self.child: Process | None = None
        self.code: int | None = None
        self.burst: float | None = None

    def outage_context(self) -> str:
        if not self.renderer.good:
            return f"nothing rendered yet; retrying with backoff ({CONSUL_HINT})"
        return "the files rendered last stay as they are; retrying with backoff"

    def install_signals(self) -> None:
        def post(kind: str) -> object:
            def handler(signum: int, frame: FrameType | None) -> None:
                self.loop.post(Event(kind, signum))

            return handler

        signal.signal(signal.SIGTERM, post(STOP))  # type: ignore[arg-type]
        signal.signal(signal.SIGINT, post(STOP))  # type: ignore[arg-type]
        signal.signal(signal.SIGHUP, post(RELOAD))  # type: ignore[arg-type]
        signal.signal(signal.SIGUSR1, post(FORWARD))  # type: ignore[arg-type]
        signal.signal(signal.SIGUSR2, post(FORWARD))  # type: ignore[arg-type]

    def run(self) -> int:
        self.install_signals()
        log.info(
            "watching Consul at %s; %d template(s)",
            self.client.config.address,
            len(self.renderer.specs),
        )
        self.catalog.start()
        try:
            while self.code is None:
                event = self.loop.next()
                if event is not None:
                    self.handle(event)
        finally:
            self.catalog.stop()
            self.kv.stop()
            if self.child is not None:
                self.child.stop(
                    self.options.kill_signal if self.options else signal.SIGTERM, self.kill_timeout
                )
        return self.code if self.code is not None else 1

    @property
    def kill_timeout(self) -> float:
        return self.options.kill_timeout if self.options else 30.0

    def handle(self, event: Event) -> None:
        if event.kind == CHANGED:
            now = self.loop.clock()
            self.burst = now if self.burst is None else self.burst
            self.loop.after("render", min(now + self.wait_min, self.burst + self.wait_max) - now)
        elif event.kind == RELOAD:
            log.info("SIGHUP: rendering again")
            self.loop.after("render", 0)
        elif event.kind == "render":
            if not self.catalog.ready():
                self.loop.after("render", 0.05)
                return
            self.burst = None
            code = self.step(self.catalog.snapshot())
            if code:
                self.code = code
        elif event.kind == STOP:
            self.code = 0
        elif event.kind == FORWARD and self.child is not None:
            self.child.send(signal.Signals(int(event.detail)))  # type: ignore[call-overload]
        elif event.kind == CHILD_EXITED and event.detail is not None:
            process, code = cast(tuple[Process, int], event.detail)
            if process is self.child:
                log.info("child (pid %d) exited with code %d", process.pid, code)
                self.child = None
                self.code = code
        elif event.kind == "reload-child":
            self.reload_child()

    def step(self, snapshot: Catalog) -> int:
        """One render of every template; non-zero to stop with that exit code."""
        outcome = self.renderer.render(snapshot, self.kv.snapshot())
        self.kv.want(outcome.keys)
        broken = self.renderer.never_rendered(outcome)
        if broken:
            log.error("cannot render %s; stopping", ", ".join(r.spec.name for r in broken))
            return 1
        unwritable = self.renderer.store(outcome)
        if unwritable:
            log.error("cannot write %s; stopping", ", ".join(str(s.dest) for s in unwritable))
            return 1
        if self.renderer.dry:
            return 0
        for command in outcome.commands():
            run_command(command, self.command_timeout)
        if self.options is None:
            return 0
        if self.child is None and outcome.complete:
            return self.start_child()
        if self.child is not None and outcome.changed:
            splay = random.uniform(0, self.options.splay) if self.options.splay > 0 else 0
            self.loop.after("reload-child", splay)
        return 0

    def start_child(self) -> int:
        assert self.options is not None
        try:
            self.child = Process(
                self.options.command,
                on_exit=lambda p, code: self.loop.post(Event(CHILD_EXITED, (p, code))),
                own_group=True,
            )
        except OSError as exc:
            log.error("cannot start %s: %s", shlex.join(self.options.command), exc)
            return 127
        log.info("started %s (pid %d)", shlex.join(self.options.command), self.child.pid)
        return 0

    def reload_child(self) -> None:
        """A file changed: signal the child, or restart it."""
        if self.child is None or self.options is None:
            return
        if self.options.reload_signal is not None:
            log.info(
                "sending %s to the child (pid %d)", self.options.reload_signal.name, self.child.pid
            )
            self.child.send(self.options.reload_signal)
            return
        log.info("restarting the child (no reload signal configured)")
        old, self.child = self.child, None
        old.stop(self.options.kill_signal, self.options.kill_timeout)
        code = self.start_child()
        if code:
            self.code = code

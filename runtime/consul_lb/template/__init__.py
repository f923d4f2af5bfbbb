"""Template mode: a generic Consul-to-file renderer in the spirit of consul-template.

Each ``--template SRC:DEST[:COMMAND]`` is a Jinja2 template rendered from Consul's catalog
(and KV keys, when the template asks for them) to DEST; COMMAND runs when DEST changed.
With ``--exec`` a child process is started after the first complete render and reloaded
(a signal, or a restart) whenever a file changed, as consul-template's exec mode does.

Dependencies are discovered by rendering: a KV key is watched from the first render that
asks for it, and no longer watched once no template asks for it. A template whose data
has not arrived yet is not written (its previous file stays), so a file never holds a
half-known state.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import jinja2

from consul_lb.atomic_write import replace_file
from consul_lb.consul.catalog import Catalog, Instance, Service
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.kv import KVWatcher, normalise_key, read_keys
from consul_lb.consul.watch import CatalogWatcher, read_once
from consul_lb.durations import DurationError, parse_duration, parse_wait
from consul_lb.render import environment

log = logging.getLogger("template")

# A template may only learn of a key once it has the value of another one (conditional
# lookups); --once reads keys in rounds until nothing new is asked for, with a bound so
# that a template computing ever-new key names cannot loop forever.
MAX_ONCE_ROUNDS = 16


def all_services(name: str, tags: tuple[str, ...]) -> bool:
    """Template mode watches every service: any template may ask for any of them."""
    return True


# ---------------------------------------------------------------------------------------
# Arguments


@dataclass(frozen=True)
class TemplateSpec:
    source: Path
    dest: Path
    command: str | None = None

    @property
    def name(self) -> str:
        return str(self.source)


def parse_template_spec(raw: str) -> TemplateSpec:
    """consul-template's ``-template "src:dest[:command]"``: the first two colons separate,
    so the command may contain colons, the paths may not."""
    parts = raw.split(":", 2)
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise argparse.ArgumentTypeError(f"expected SRC:DEST[:COMMAND], got {raw!r}")
    command = parts[2].strip() if len(parts) == 3 else ""
    return TemplateSpec(Path(parts[0].strip()), Path(parts[1].strip()), command or None)


def parse_signal(raw: str) -> signal.Signals | None:
    """``SIGHUP``, ``HUP``, ``hup`` or ``1``; ``none`` (or empty) for no signal."""
    text = raw.strip().upper()
    if text in {"", "NONE"}:
        return None
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown signal {raw!r}") from None


def _duration(raw: str) -> float:
    try:
        return parse_duration(raw)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_command(raw: str) -> list[str]:
    """``--exec``: split like a shell would, but not run by one, so that signals reach the
    program itself rather than a shell in front of it."""
    try:
        argv = shlex.split(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split {raw!r}: {exc}") from None
    if not argv:
        raise argparse.ArgumentTypeError("expected a command")
    return argv


def _wait(raw: str) -> tuple[float, float]:
    try:
        return parse_wait(raw)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


DESCRIPTION = """\
Render Jinja2 templates from Consul's catalog (and KV) to files, like consul-template;
run a command when a file changes, or supervise a child process and reload it.

Template functions:
  services()                  every service in the catalog: .name, .tags, .instances
  service(name[, tag])        the passing instances of a service (optionally only those
                              with a tag): .address, .port, .tags, .node, .service_id
  key(path)                   a KV value; the file is not written until the key exists
  key_or_default(path, dflt)  a KV value, or dflt while the key does not exist
  env(name[, default])        an environment variable of the runtime
"""

EPILOG = """\
examples:
  consul-lb template --template upstreams.conf.j2:/etc/nginx/conf.d/upstreams.conf:"nginx -s reload"
  consul-lb template --template hosts.j2:/srv/hosts --exec "my-server --hosts /srv/hosts" \\
      --exec-reload-signal SIGHUP
  consul-lb template --template hosts.j2:/dev/null --once --dry

signals: SIGTERM/SIGINT stop the child (kill signal, then SIGKILL after the kill
timeout) and exit; SIGHUP re-reads the templates and renders again; SIGUSR1/SIGUSR2 are
passed on to the child. When the child exits on its own, the runtime exits with its code.
"""


def add_parser(subparsers: Any) -> None:
    """Register ``template`` on the ``add_subparsers()`` object of the main parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "template",
        help="render Jinja2 templates from Consul to files (consul-template style)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--template",
        dest="templates",
        action="append",
        type=parse_template_spec,
        required=True,
        metavar="SRC:DEST[:COMMAND]",
        help="render SRC to DEST; run COMMAND (with sh -c) when DEST changed. Repeatable.",
    )
    p.add_argument(
        "--wait",
        type=_wait,
        default=(0.1, 1.0),
        metavar="MIN[:MAX]",
        help="render once nothing changed for MIN, at the latest MAX after the first change "
        "(default 100ms:1s; MIN alone means MAX = 4 x MIN)",
    )
    p.add_argument("--once", action="store_true", help="render once, run the commands, and exit")
    p.add_argument(
        "--dry",
        action="store_true",
        help="print rendered templates to stdout instead of writing them; run no commands",
    )
    p.add_argument(
        "--backup",
        action="store_true",
        help="keep the previous version of each file as DEST.bak",
    )
    p.add_argument(
        "--command-timeout",
        type=_duration,
        default=30.0,
        metavar="DURATION",
        help="kill a template command that runs longer than this (default 30s)",
    )
    exe = p.add_argument_group("supervised child (consul-template's exec mode)")
    exe.add_argument(
        "--exec",
        dest="exec_command",
        type=parse_command,
        metavar="CMD",
        help="start CMD (split like a shell would, not run by one) after the first "
        "complete render; reload it when a file changes",
    )
    exe.add_argument(
        "--exec-reload-signal",
        type=parse_signal,
        default=None,
        metavar="SIGNAL",
        help="signal that makes the child reload (e.g. SIGHUP); default: none, the child "
        "is restarted",
    )
    exe.add_argument(
        "--exec-kill-signal",
        type=parse_signal,
        default=signal.SIGTERM,
        metavar="SIGNAL",
        help="signal that stops the child (default SIGTERM)",
    )
    exe.add_argument(
        "--exec-kill-timeout",
        type=_duration,
        default=30.0,
        metavar="DURATION",
        help="wait this long after the kill signal before SIGKILL (default 30s)",
    )
    exe.add_argument(
        "--exec-splay",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="wait a random time up to this before reloading or restarting the child, "
        "so that many instances do not reload at once (default 0s)",
    )


# ---------------------------------------------------------------------------------------
# Rendering


class TemplateData:
    """The functions a template calls, over one catalog snapshot and the KV values read
    so far; it records what the template asked for (its dependencies)."""

    def __init__(
        self,
        catalog: Catalog,
        kv: Mapping[str, str | None],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.catalog = catalog
        self.kv = kv
        self.env = os.environ if env is None else env
        self.keys: set[str] = set()  # every key asked for
        self.missing: set[str] = set()  # asked for but not read from Consul yet
        self.absent: set[str] = set()  # key() of a key that does not exist

    def services(self) -> list[Service]:
        return list(self.catalog.services)

    def service(self, name: str, tag: str | None = None) -> list[Instance]:
        found = self.catalog.get(name)
        instances = found.instances if found else ()
        return [i for i in instances if tag is None or tag in i.tags]

    def _lookup(self, path: str) -> str | None:
        key = normalise_key(str(path))
        if not key:
            if self.missing:
                # Built from a placeholder ("" for a key not read yet): this render is
                # thrown away anyway, and "" is no key to watch.
                return None
            raise ValueError("empty KV key path")
        self.keys.add(key)
        if key not in self.kv:
            self.missing.add(key)
            return None
        return self.kv[key]

    def key(self, path: str) -> str:
        value = self._lookup(path)
        if value is None:
            # consul-template's key() waits for the key to exist; key_or_default does not.
            if normalise_key(path) not in self.missing:
                self.absent.add(normalise_key(path))
            return ""
        return value

    def key_or_default(self, path: str, default: str = "") -> str:
        value = self._lookup(path)
        return default if value is None else value

    def env_var(self, name: str, default: str = "") -> str:
        return self.env.get(name, default)

    def functions(self) -> dict[str, Callable[..., Any]]:
        return {
            "services": self.services,
            "service": self.service,
            "key": self.key,
            "key_or_default": self.key_or_default,
            "env": self.env_var,
        }


@dataclass(frozen=True)
class Rendered:
    """One template rendered against one snapshot. ``text`` is None when it must not be
    written: its data is incomplete (``missing``/``absent``) or it failed (``error``)."""

    spec: TemplateSpec
    text: str | None
    keys: frozenset[str] = frozenset()
    missing: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.text is not None


def template_environment(spec: TemplateSpec) -> jinja2.Environment:
    # One environment per template: two templates may share a file name in different
    # directories, and includes resolve next to the template that includes them.
    return environment([spec.source.parent])


def _template_line(exc: BaseException) -> str:
    """Jinja2 rewrites tracebacks so that template frames carry the template's file name
    and line; the innermost one is where the template failed."""
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if not frame.filename.endswith(".py") and not frame.filename.startswith("<"):
            where = f"{frame.filename}:{frame.lineno}"
    return where


def describe_error(spec: TemplateSpec, exc: Exception) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"{exc.filename or spec.source}:{exc.lineno}: syntax error: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"{spec.source}: template not found ({exc.name})"
    where = _template_line(exc) or str(spec.source)
    return f"{where}: {type(exc).__name__}: {exc}"


def render_template(
    spec: TemplateSpec,
    catalog: Catalog,
    kv: Mapping[str, str | None],
    env: jinja2.Environment | None = None,
) -> Rendered:
    data = TemplateData(catalog, kv)
    text: str | None = None
    error: str | None = None
    try:
        jinja = env or template_environment(spec)
        text = jinja.get_template(spec.source.name).render(data.functions())
    except Exception as exc:  # any error inside a template is the template's, not ours
        error = describe_error(spec, exc)
    if data.missing or data.absent:
        # Rendered with placeholders for unread keys: not the real thing, and an error
        # may only be an artefact of a placeholder. Render again once the keys are read.
        text, error = None, None
    return Rendered(
        spec,
        text,
        frozenset(data.keys),
        frozenset(data.missing),
        frozenset(data.absent),
        error,
    )


# ---------------------------------------------------------------------------------------
# Writing and commands


def write_atomic(path: Path, text: str, backup: bool = False) -> bool:
    """Write ``text`` to ``path`` unless it already holds exactly that; True when written.
    Temporary file in the same directory, then rename: readers see the old file or the
    new one, never half of one. The file's mode is kept (0644 for a new one)."""
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    replace_file(path, data, mode, backup)
    return True


def run_command(command: str, timeout: float) -> bool:
    """Run a template's command with ``sh -c``, as consul-template does; True on exit 0.
    Its own process group, so that a timeout kills whatever the shell started too."""
    proc = subprocess.Popen(["/bin/sh", "-c", command], process_group=0)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.error("command %r still running after %.1fs; killing it", command, timeout)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False
    if code != 0:
        log.error("command %r failed with exit code %d", command, exit_status(code))
        return False
    log.info("command %r succeeded", command)
    return True


def exit_status(returncode: int) -> int:
    """Popen's -N (killed by signal N) as a shell reports it, 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Outcome:
    """What one render of every template did."""

    rendered: list[Rendered]
    changed: list[TemplateSpec] = field(default_factory=list)
    failed: list[Rendered] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        return {k for r in self.rendered for k in r.keys}

    @property
    def missing(self) -> set[str]:
        return {k for r in self.rendered for k in r.missing}

    @property
    def complete(self) -> bool:
        """Every template rendered: what must hold before the child starts."""
        return all(r.ready for r in self.rendered)

    def commands(self) -> list[str]:
        """Commands of the changed files, each once, in template order (two templates
        sharing ``nginx -s reload`` reload nginx once)."""
        seen: dict[str, None] = {}
        for spec in self.changed:
            if spec.command:
                seen.setdefault(spec.command, None)
        return list(seen)


class Renderer:
    """Renders every template and writes (or prints) those that changed; remembers what
    it logged so that a template waiting for a key says so once, not once per change."""

    def __init__(
        self, specs: Iterable[TemplateSpec], dry: bool = False, backup: bool = False
    ) -> None:
        self.specs = list(specs)
        self.envs = {spec: template_environment(spec) for spec in self.specs}
        self.dry = dry
        self.backup = backup
        self.out: TextIO = sys.stdout
        self.printed: dict[TemplateSpec, str] = {}
        self.reported: dict[TemplateSpec, str] = {}
        self.good: set[TemplateSpec] = set()  # rendered successfully at least once

    def render(self, catalog: Catalog, kv: Mapping[str, str | None]) -> Outcome:
        """Render every template and log what went wrong; writes nothing."""
        outcome = Outcome([render_template(s, catalog, kv, self.envs[s]) for s in self.specs])
        for r in outcome.rendered:
            self._report(r)
            if r.error:
                outcome.failed.append(r)
            elif r.ready:
                self.good.add(r.spec)
        return outcome

    def store(self, outcome: Outcome) -> None:
        """Write (or print) each rendered template whose text changed."""
        for r in outcome.rendered:
            if r.text is not None and self._store(r.spec, r.text):
                outcome.changed.append(r.spec)

    def never_rendered(self, outcome: Outcome) -> list[Rendered]:
        """Failed templates that never rendered: a mistake in the template itself, most
        likely, which no change in Consul will fix."""
        return [r for r in outcome.failed if r.spec not in self.good]

    def _store(self, spec: TemplateSpec, text: str) -> bool:
        if self.dry:
            if self.printed.get(spec) == text:
                return False
            self.printed[spec] = text
            self.out.write(f"> {spec.dest}\n{text}")
            self.out.flush()
            return True
        try:
            written = write_atomic(spec.dest, text, self.backup)
        except OSError as exc:
            log.error("%s: cannot write %s: %s", spec.name, spec.dest, exc)
            return False
        if written:
            log.info("rendered %s to %s", spec.name, spec.dest)
        return written

    def _report(self, r: Rendered) -> None:
        if r.error:
            # The error starts with the file and line; name the top template too when
            # the error is in a file it includes.
            where = "" if r.error.startswith(r.spec.name) else f"{r.spec.name}: "
            line = f"{where}{r.error}; keeping the previous {r.spec.dest}"
            level = logging.ERROR
        elif r.absent:
            keys = ", ".join(repr(k) for k in sorted(r.absent))
            line = (
                f"{r.spec.name}: waiting for KV key(s) {keys} to exist "
                "(key() waits; key_or_default() does not)"
            )
            level = logging.WARNING
        else:
            self.reported.pop(r.spec, None)
            return
        if self.reported.get(r.spec) != line:
            log.log(level, "%s", line)
            self.reported[r.spec] = line


# ---------------------------------------------------------------------------------------
# The supervised child


@dataclass(frozen=True)
class ExecOptions:
    command: list[str]
    reload_signal: signal.Signals | None = None
    kill_signal: signal.Signals = signal.SIGTERM
    kill_timeout: float = 30.0
    splay: float = 0.0


class Child:
    """One supervised process. ``on_exit(code)`` is called when it exits on its own (not
    when this class stopped or restarted it)."""

    def __init__(self, options: ExecOptions, on_exit: Callable[[int], None]) -> None:
        self.options = options
        self.on_exit = on_exit
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Its own process group: a Ctrl-C in a terminal reaches only the runtime, which
        # then stops the child with the kill signal, instead of both at once.
        proc = subprocess.Popen(self.options.command, process_group=0)
        with self.lock:
            self.proc = proc
        log.info("started %s (pid %d)", shlex.join(self.options.command), proc.pid)
        threading.Thread(target=self._reap, args=(proc,), name="exec-wait", daemon=True).start()

    def running(self) -> bool:
        with self.lock:
            return self.proc is not None and self.proc.poll() is None

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        # wait() reaps the process (no zombie) whoever else waits on it too.
        code = exit_status(proc.wait())
        with self.lock:
            own_exit = proc is self.proc
        if own_exit:
            log.info("child (pid %d) exited with code %d", proc.pid, code)
            self.on_exit(code)

    def send(self, sig: signal.Signals) -> None:
        with self.lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            log.info("sending %s to the child (pid %d)", sig.name, proc.pid)
            proc.send_signal(sig)

    def reload(self, stop: threading.Event) -> None:
        """A file changed: signal the child, or restart it, after the splay."""
        if self.options.splay > 0 and stop.wait(random.uniform(0, self.options.splay)):
            return
        if self.options.reload_signal is not None:
            self.send(self.options.reload_signal)
            return
        log.info("restarting the child (no reload signal configured)")
        self.stop()
        self.start()

    def stop(self) -> int | None:
        """Kill signal, then SIGKILL after the kill timeout; the child's exit code."""
        with self.lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            log.info("sending %s to the child (pid %d)", self.options.kill_signal.name, proc.pid)
            proc.send_signal(self.options.kill_signal)
            try:
                proc.wait(self.options.kill_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "child (pid %d) still running %.1fs after %s; sending SIGKILL",
                    proc.pid,
                    self.options.kill_timeout,
                    self.options.kill_signal.name,
                )
                proc.kill()
                proc.wait()
        return exit_status(proc.returncode)


# ---------------------------------------------------------------------------------------
# Running


def _check_combinations(args: argparse.Namespace) -> str | None:
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


def run(args: argparse.Namespace, consul: ConsulConfig) -> int:
    problem = _check_combinations(args)
    if problem:
        print(f"consul-lb template: {problem}", file=sys.stderr)
        return 2
    renderer = Renderer(args.templates, dry=args.dry, backup=args.backup)
    if args.once:
        return run_once(renderer, consul, args.command_timeout)
    return Watching(renderer, consul, args, exec_options(args)).run()


def run_once(renderer: Renderer, consul: ConsulConfig, command_timeout: float) -> int:
    """Read the catalog and the keys the templates ask for (in rounds: a key may be asked
    for only once another one is known), render, write, run the commands."""
    catalog = read_once(consul, all_services)
    kv: dict[str, str | None] = {}
    outcome = renderer.render(catalog, kv)
    for _ in range(MAX_ONCE_ROUNDS):
        if not outcome.missing:
            break
        kv.update(read_keys(consul, outcome.missing))
        outcome = renderer.render(catalog, kv)
    if not outcome.complete:
        for r in outcome.rendered:
            if not r.ready:
                reason = r.error or "KV key(s) missing: " + ", ".join(sorted(r.absent | r.missing))
                print(f"consul-lb template: {r.spec.name}: {reason}", file=sys.stderr)
        return 1
    renderer.store(outcome)
    if renderer.dry:
        return 0
    failed = [c for c in outcome.commands() if not run_command(c, command_timeout)]
    return 1 if failed else 0


class Watching:
    """The long-running mode: watch, render on change, run commands, supervise the child."""

    def __init__(
        self,
        renderer: Renderer,
        consul: ConsulConfig,
        args: argparse.Namespace,
        options: ExecOptions | None,
    ) -> None:
        self.renderer = renderer
        self.consul = consul
        self.wait_min, self.wait_max = args.wait
        self.command_timeout: float = args.command_timeout
        self.stop = threading.Event()
        self.catalog = CatalogWatcher(consul, all_services)
        # KV changes wake the same debounce loop as catalog changes.
        self.kv = KVWatcher(
            consul, self.catalog.changed, stats=self.catalog.stats, outage=self.catalog.outage
        )
        self.child = Child(options, self._child_exited) if options else None
        self.child_code: int | None = None
        self.child_started = False

    def _child_exited(self, code: int) -> None:
        self.child_code = code
        self.stop.set()

    def _install_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: rendering again")
            self.catalog.changed.set()

        def forward(signum: int, frame: FrameType | None) -> None:
            if self.child:
                self.child.send(signal.Signals(signum))

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, forward)
        signal.signal(signal.SIGUSR2, forward)

    def run(self) -> int:
        self._install_signals()
        log.info(
            "watching Consul at %s; %d template(s)", self.consul.address, len(self.renderer.specs)
        )
        self.catalog.start()
        code = 0
        try:
            for snapshot in self.catalog.changes(self.wait_min, self.wait_max, self.stop):
                code = self.step(snapshot)
                if code:
                    break
        finally:
            self.catalog.stop()
            self.kv.stop()
            if self.child:
                self.child.stop()
        return self.child_code if self.child_code is not None else code

    def step(self, snapshot: Catalog) -> int:
        """One render of every template; non-zero to stop with that exit code."""
        outcome = self.renderer.render(snapshot, self.kv.snapshot())
        self.kv.want(outcome.keys)
        broken = self.renderer.never_rendered(outcome)
        if broken:
            log.error("cannot render %s; stopping", ", ".join(r.spec.name for r in broken))
            return 1
        self.renderer.store(outcome)
        if self.renderer.dry:
            return 0
        for command in outcome.commands():
            run_command(command, self.command_timeout)
        if self.child is None or self.stop.is_set():
            return 0
        try:
            if not self.child_started and outcome.complete:
                self.child_started = True
                self.child.start()
            elif self.child_started and outcome.changed:
                self.child.reload(self.stop)
        except OSError as exc:
            log.error("cannot start %s: %s", shlex.join(self.child.options.command), exc)
            return 127
        return 0

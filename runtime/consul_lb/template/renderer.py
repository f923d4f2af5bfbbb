"""Render each template against one snapshot, write the files that changed (atomically,
only on change, their mode kept), and run their commands."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import jinja2

from consul_lb.atomic_write import replace_file
from consul_lb.child import exit_status
from consul_lb.consul.catalog import Catalog
from consul_lb.render import environment
from consul_lb.template.args import TemplateSpec
from consul_lb.template.functions import TemplateData

log = logging.getLogger("template")


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
        self.written: set[TemplateSpec] = set()  # written (or unchanged) at least once

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

    def store(self, outcome: Outcome) -> list[TemplateSpec]:
        """Write (or print) each rendered template whose text changed. Returns the
        templates that could not be written and never were: a destination the runtime
        cannot write (permissions, a missing directory) that no change in Consul will fix."""
        unwritable: list[TemplateSpec] = []
        for r in outcome.rendered:
            if r.text is None:
                continue
            try:
                if self._store(r.spec, r.text):
                    outcome.changed.append(r.spec)
                self.written.add(r.spec)
            except OSError as exc:
                log.error("%s: cannot write %s: %s", r.spec.name, r.spec.dest, exc)
                if r.spec not in self.written:
                    unwritable.append(r.spec)
        return unwritable

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
        written = write_atomic(spec.dest, text, self.backup)
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

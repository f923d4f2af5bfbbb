"""Template mode's command line: ``--template SRC:DEST[:COMMAND]`` and the supervised
child's options, in consul-template's terms."""

from __future__ import annotations

import argparse
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consul_lb.durations import DurationError, parse_duration, parse_wait


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


@dataclass(frozen=True)
class ExecOptions:
    command: list[str]
    reload_signal: signal.Signals | None = None
    kill_signal: signal.Signals = signal.SIGTERM
    kill_timeout: float = 30.0
    splay: float = 0.0

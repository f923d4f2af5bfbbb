"""One progress line per step of a long job, with its time; the full output in a log file.

./dev and the Invoke tasks base, build, demo and test run long steps (apt, dockerd,
mmdebstrap, docker builds, compose). Each step is one line: the time since ./dev started,
the step, and when it ends its result and how long it took:

    [ 1:42] building consul-lb/haproxy:latest ... built in 9 steps (31.2s)

On a terminal the line is redrawn while the step runs (Docker's "step 3/9", seconds).
What the tools print goes to a log file in build/logs/; when a step fails, its last lines,
the log's path and what to try are printed. ``./dev --verbose`` or ``invoke TASK
--verbose`` (CONSUL_LB_VERBOSE=1) prints everything as it comes instead.

Standard library only: ./dev's host set-up runs it with the system python3
(``python3 -m devtools.progress --title TITLE -- COMMAND...``) before .venv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

LOG_DIR = Path(__file__).resolve().parent.parent / "build" / "logs"
# Colours some tools add (Docker's build stream marks stderr red): noise in a log.
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
TAIL_LINES = 15
KEEP_LOGS = 20


class StepFailed(RuntimeError):
    """A step failed. What failed, its last lines, the log and the advice are printed."""


class CommandFailed(RuntimeError):
    """A command run by a step exited non-zero."""


class Progress:
    """The steps of one run (./dev, or one Invoke task): their lines and their log file."""

    def __init__(
        self,
        log: Path,
        *,
        verbose: bool = False,
        out: TextIO | None = None,
        started: float | None = None,
        live: bool | None = None,
    ) -> None:
        self.log_path = log
        self.verbose = verbose
        self.out = out or sys.stderr
        self.started = time.time() if started is None else started
        # Redraw the line in place only on a terminal; a CI log gets each line once.
        self.live = (not verbose and self.out.isatty()) if live is None else live
        self._log: TextIO | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, verbose: bool = False, environ: Mapping[str, str] = os.environ) -> Progress:
        """./dev passes its log file, start time and --verbose on in the environment."""
        log = environ.get("CONSUL_LB_LOG") or str(LOG_DIR / time.strftime("%Y%m%d-%H%M%S.log"))
        started = environ.get("CONSUL_LB_STARTED")
        return cls(
            Path(log),
            verbose=verbose or environ.get("CONSUL_LB_VERBOSE") == "1",
            started=float(started) if started else None,
        )

    def clock(self) -> str:
        seconds = int(time.time() - self.started)
        return f"[{seconds // 60:2d}:{seconds % 60:02d}]"

    def log(self, text: str) -> None:
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            _prune(self.log_path.parent, keep=self.log_path)
            self._log = self.log_path.open("a", encoding="utf-8")
        self._log.write(text + "\n")
        self._log.flush()

    def write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()

    @contextmanager
    def step(self, title: str, hint: str = "") -> Iterator[Step]:
        """A step: any exception inside it is reported and raised again as StepFailed."""
        step = Step(self, title, hint)
        try:
            yield step
        except KeyboardInterrupt:
            step.finish("interrupted")
            raise
        except Exception as exc:
            step.fail(exc)
            raise StepFailed(f"{title} failed") from exc
        step.finish(step.done)


class Step:
    """One step's line. ``done`` is what its line says when it ends well."""

    def __init__(self, progress: Progress, title: str, hint: str) -> None:
        self.progress = progress
        self.title = title
        self.hint = hint
        self.done = "done"
        self._status = ""
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._clock = progress.clock()
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        progress.log(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} {title}")
        if progress.verbose:
            progress.write(f"==> {self._clock} {title}\n")
        elif progress.live:
            self._redraw()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        else:
            progress.write(f"{self._clock} {title} ... ")

    def output(self, line: str) -> None:
        """A line of the tools' output: into the log (and on screen with --verbose)."""
        line = ANSI_COLOUR.sub("", line)
        self.progress.log(line)
        if line.strip():
            self._tail.append(line)
        if self.progress.verbose:
            self.progress.write(line + "\n")

    def status(self, text: str) -> None:
        """What the step is at (shown live on a terminal), e.g. ``step 3/9``."""
        self._status = text
        if self.progress.live:
            self._redraw()

    def run(self, cmd: list[str], env: Mapping[str, str] | None = None) -> None:
        """Run ``cmd`` with its output going to ``output``; raise CommandFailed on failure."""
        self.output(f"$ {shlex.join(cmd)}")
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, **env} if env else None,
        )
        assert proc.stdout is not None
        with proc:
            for line in proc.stdout:
                self.output(line.rstrip("\n"))
        if proc.returncode:
            shown = shlex.join(cmd)
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            raise CommandFailed(f"`{shown}` exited with status {proc.returncode}")

    def finish(self, result: str) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        line = f"{result} ({time.monotonic() - self._start:.1f}s)"
        progress = self.progress
        progress.log(f"<== {self.title}: {line}")
        if progress.verbose:
            progress.write(f"==> {self._clock} {self.title}: {line}\n")
        elif progress.live:
            progress.write(f"\r\x1b[K{self._clock} {self.title} ... {line}\n")
        else:
            progress.write(line + "\n")

    def fail(self, exc: BaseException) -> None:
        self.finish("FAILED")
        progress = self.progress
        progress.log(f"error: {exc}")
        what = str(exc).replace("\n", "\n    ")
        lines = [f"  what failed: {what or type(exc).__name__}"]
        if self._tail and not progress.verbose:
            lines += ["  its last lines:", *(f"    | {line}" for line in self._tail)]
        lines.append(f"  full log: {progress.log_path}")
        if self.hint:
            lines.append(f"  try: {self.hint}")
        progress.write("\n".join(lines) + "\n")

    def _redraw(self) -> None:
        status = f"{self._status}, " if self._status else ""
        line = f"{self._clock} {self.title} ... {status}{time.monotonic() - self._start:.0f}s"
        # A line longer than the terminal wraps, and \r then redraws only its last part.
        width = shutil.get_terminal_size().columns - 1
        self.progress.write(f"\r\x1b[K{line[:width]}")

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._redraw()


def _prune(directory: Path, keep: Path) -> None:
    """Keep the newest KEEP_LOGS logs: every run of ./dev writes one."""
    logs = sorted(directory.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-KEEP_LOGS]:
        if old != keep:
            old.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m devtools.progress",
        description="Run COMMAND as one step: one progress line, its output in the log.",
    )
    parser.add_argument("--title", required=True, help="what the step does")
    parser.add_argument("--hint", default="", help="what to try when it fails")
    parser.add_argument("command", nargs="+", help="the command (after --)")
    args = parser.parse_args(argv)
    try:
        with Progress.from_env().step(args.title, args.hint) as step:
            step.run(args.command)
    except StepFailed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

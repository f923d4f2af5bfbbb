"""Progress lines: one per step, the tools' output in the log, a failure that says what
failed, where the log is and what to try."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from devtools import progress

DURATION = r"\(\d+\.\ds\)"


def make(tmp_path: Path, verbose: bool = False) -> tuple[progress.Progress, io.StringIO]:
    out = io.StringIO()
    return progress.Progress(tmp_path / "run.log", verbose=verbose, out=out, live=False), out


def test_one_line_per_step_and_the_output_in_the_log(tmp_path: Path) -> None:
    steps, out = make(tmp_path)
    with steps.step("installing host packages") as step:
        step.run([sys.executable, "-c", "print('Setting up docker.io ...')"])
    with steps.step("Debian trixie base image") as step:
        step.done = "local/debian:trixie (present)"
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(rf"\[ 0:\d\d\] installing host packages \.\.\. done {DURATION}", lines[0])
    assert re.fullmatch(
        rf"\[ 0:\d\d\] Debian trixie base image \.\.\. local/debian:trixie \(present\) {DURATION}",
        lines[1],
    )
    log = (tmp_path / "run.log").read_text()
    assert "Setting up docker.io ..." in log
    assert "Setting up" not in out.getvalue()


def test_a_failed_step_shows_what_failed_its_last_lines_the_log_and_what_to_try(
    tmp_path: Path,
) -> None:
    steps, out = make(tmp_path)
    script = "for i in range(40): print('line', i)\nraise SystemExit(100)"
    failing = pytest.raises(progress.StepFailed, match="installing host packages")
    with failing, steps.step("installing host packages", hint="set DEBIAN_MIRROR") as step:
        step.run([sys.executable, "-c", script])
    shown = out.getvalue()
    assert re.search(rf"installing host packages \.\.\. FAILED {DURATION}\n", shown)
    assert "  what failed: `" in shown and "` exited with status 100" in shown
    assert "    | line 39\n" in shown
    assert "line 10\n" not in shown  # only the last lines
    assert f"  full log: {tmp_path / 'run.log'}\n" in shown
    assert shown.endswith("  try: set DEBIAN_MIRROR\n")
    assert "line 0\n" in (tmp_path / "run.log").read_text()


def test_an_exception_in_a_step_is_its_failure(tmp_path: Path) -> None:
    steps, out = make(tmp_path)
    with pytest.raises(progress.StepFailed) as info, steps.step("Consul image"):
        raise RuntimeError("no Docker engine answers")
    assert str(info.value) == "Consul image failed"
    assert "  what failed: no Docker engine answers\n" in out.getvalue()


def test_verbose_shows_everything_as_it_comes(tmp_path: Path) -> None:
    steps, out = make(tmp_path, verbose=True)
    with steps.step("building x") as step:
        step.output("Step 1/2 : FROM scratch")
    shown = out.getvalue().splitlines()
    assert re.fullmatch(r"==> \[ 0:\d\d\] building x", shown[0])
    assert shown[1] == "Step 1/2 : FROM scratch"
    assert re.fullmatch(rf"==> \[ 0:\d\d\] building x: done {DURATION}", shown[2])


def test_dev_passes_the_log_the_clock_and_verbose_on(tmp_path: Path) -> None:
    env = {
        "CONSUL_LB_LOG": str(tmp_path / "dev.log"),
        "CONSUL_LB_STARTED": "1000.5",
        "CONSUL_LB_VERBOSE": "1",
    }
    steps = progress.Progress.from_env(environ=env)
    assert (steps.log_path, steps.started, steps.verbose) == (tmp_path / "dev.log", 1000.5, True)
    assert progress.Progress.from_env(environ={}).log_path.parent == progress.LOG_DIR


def test_the_command_line_for_the_host_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSUL_LB_LOG", str(tmp_path / "dev.log"))
    monkeypatch.delenv("CONSUL_LB_VERBOSE", raising=False)
    ok = progress.main(["--title", "starting the Docker engine", "--", sys.executable, "-V"])
    assert ok == 0
    assert "starting the Docker engine ... done" in capsys.readouterr().err
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    assert progress.main(["--title", "t", "--hint", "h", "--", *failing]) == 1
    assert "  try: h\n" in capsys.readouterr().err

"""The wheelhouse the images install the runtime from, made on the host.

PyPI is reachable from the host, not necessarily from inside a build, so the runtime's
wheel and its dependencies' wheels for the image's Python are made here and copied in.
pip picks its package index as it always does, from ``PIP_INDEX_URL``,
``PIP_EXTRA_INDEX_URL`` and ``PIP_FIND_LINKS`` first, then pip's configuration files
(``pip config list`` shows them), else PyPI; the step's line says which it used.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tomllib
from pathlib import Path

from devtools.mirrors import redact
from devtools.progress import Step

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "build" / "wheelhouse"
# trixie's python3, which the base image runs the runtime with.
IMAGE_PYTHON = "3.13"
# pip's settings that decide where packages come from.
INDEX_SETTINGS = ("index-url", "extra-index-url", "find-links", "no-index")
# `pip config list` sections, lowest precedence first (":env:" is the PIP_* variables).
PRECEDENCE = {"global": 0, "download": 1, "wheel": 1, ":env:": 2}
HINT = (
    "pip could not get a package: pip uses its own configuration (see `pip config list`); "
    "set PIP_INDEX_URL=https://<index>/simple for another index, and https_proxy if pip "
    "must go through a proxy"
)


def pip_index(python: str = sys.executable) -> str:
    """Where pip will look, as its configuration says (``pip config list``): the variables
    first, then pip.conf's [download]/[wheel] sections, then [global]; else PyPI."""
    proc = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    found: dict[str, tuple[int, str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.partition(".")
        rank = PRECEDENCE.get(section, -1)
        if name in INDEX_SETTINGS and rank >= 0 and rank >= found.get(name, (-1, ""))[0]:
            origin = (
                f"PIP_{name.upper().replace('-', '_')}" if rank == 2 else f"pip.conf [{section}]"
            )
            shown = " ".join(redact(v) for v in value.strip("'\"").split())
            found[name] = (rank, f"{name} {shown} ({origin})")
    described = [found[name][1] for name in INDEX_SETTINGS if name in found]
    if "index-url" not in found and "no-index" not in found:
        described.insert(0, "PyPI (pip's default index)")
    return "; ".join(described)


def runtime_dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        deps: list[str] = tomllib.load(fh)["project"]["dependencies"]
    return deps


def build(step: Step, dest: Path = DEST, python_version: str = IMAGE_PYTHON) -> None:
    """The runtime's wheel and its dependencies' wheels for ``python_version`` in ``dest``."""
    step.hint = HINT
    index = pip_index()
    step.output(f"pip's index: {index}")
    step.status(f"pip index: {index}")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    step.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), str(ROOT)])
    machine = platform.machine()
    step.run(
        [
            *pip,
            "download",
            "--dest",
            str(dest),
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--platform",
            f"manylinux2014_{machine}",
            "--platform",
            f"manylinux_2_28_{machine}",
            *runtime_dependencies(),
        ]
    )
    wheels = len(list(dest.glob("*.whl")))
    step.done = f"{wheels} wheels for Python {python_version} (pip index: {index})"

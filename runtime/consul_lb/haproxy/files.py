"""Where HAProxy's files live, how a new configuration is checked with ``haproxy -c``
before anything is applied, and how it is written (atomically, one backup kept)."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from consul_lb.atomic_write import replace_file
from consul_lb.render import HaproxyFiles


@dataclass(frozen=True)
class Paths:
    state_dir: Path

    @property
    def live(self) -> Path:
        return self.state_dir / "live"

    @property
    def config(self) -> Path:
        return self.live / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.state_dir / "master.sock"

    @property
    def server_state(self) -> Path:
        return self.state_dir / "server-state"

    def template_paths(self) -> dict[str, str]:
        return {
            "admin_socket": str(self.admin_socket),
            "master_socket": str(self.master_socket),
            "server_state": str(self.server_state),
        }


@dataclass(frozen=True)
class Validation:
    ok: bool
    message: str  # HAProxy's own words when not ok


def check(files: HaproxyFiles, haproxy: str = "haproxy") -> Validation:
    """``haproxy -c`` on the files as they would be installed (same names, same
    relative map path), in a scratch directory."""
    with tempfile.TemporaryDirectory(prefix="consul-lb-check-") as tmp:
        for name, text in files.files().items():
            Path(tmp, name).write_text(text)
        proc = subprocess.run(
            [haproxy, "-c", "-f", str(Path(tmp, "haproxy.cfg"))],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode == 0:
        return Validation(True, "")
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    alerts = [ln for ln in lines if "ALERT" in ln] or lines
    return Validation(False, " | ".join(alerts[:5]) or f"haproxy -c exited {proc.returncode}")


def read_installed(paths: Paths) -> HaproxyFiles | None:
    try:
        return HaproxyFiles(
            config=paths.config.read_text(),
            hosts_map=(paths.live / "hosts.map").read_text(),
        )
    except FileNotFoundError:
        return None


def install(files: HaproxyFiles, paths: Paths) -> None:
    """Write each file to a temporary name, keep the previous one as ``<name>.bak``,
    then rename into place: HAProxy never reads a half-written file."""
    for name, text in files.files().items():
        replace_file(paths.live / name, text.encode(), backup=True)

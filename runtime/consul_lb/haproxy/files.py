"""Where HAProxy's files live, how a new configuration is checked with ``haproxy -c``
before anything is applied, and how it is written (atomically, one backup kept)."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from consul_lb.atomic_write import replace_file
from consul_lb.maps import HEALTH_MAP, ROUTING_MAPS
from consul_lb.render import HaproxyFiles

CONFIG = "haproxy.cfg"
MAPS = (*ROUTING_MAPS, HEALTH_MAP)


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
            "live": str(self.live),
        }


# A configuration of thousands of services checks in well under a second; a check that
# takes this long is stuck (e.g. resolving host names), not slow.
CHECK_TIMEOUT = 60.0


@dataclass(frozen=True)
class Validation:
    ok: bool
    message: str  # HAProxy's own words when not ok


def check(
    files: HaproxyFiles,
    live: Path | None = None,
    haproxy: str = "haproxy",
    timeout: float = CHECK_TIMEOUT,
) -> Validation:
    """``haproxy -c`` on the files as they would be installed in ``live``, copied to a
    scratch directory (the configuration's references to ``live`` pointed there, so that
    the new maps are the ones checked); at most ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="consul-lb-check-") as tmp:
        for name, text in files.files().items():
            if live is not None and name == CONFIG:
                text = text.replace(f"{live}/", f"{tmp}/")
            Path(tmp, name).write_text(text)
        try:
            proc = subprocess.run(
                [haproxy, "-c", "-f", str(Path(tmp, "haproxy.cfg"))],
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return Validation(False, f"haproxy -c did not finish within {timeout:.0f}s")
    if proc.returncode == 0:
        return Validation(True, "")
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    alerts = [ln for ln in lines if "ALERT" in ln] or lines
    return Validation(False, " | ".join(alerts[:5]) or f"haproxy -c exited {proc.returncode}")


def read_installed(paths: Paths) -> HaproxyFiles | None:
    try:
        config = paths.config.read_text()
        maps = {name: (paths.live / name).read_text() for name in MAPS}
    except FileNotFoundError:
        return None
    return HaproxyFiles(config, maps)


def install(files: HaproxyFiles, paths: Paths) -> None:
    """Write each file to a temporary name, keep the previous one as ``<name>.bak``,
    then rename into place: HAProxy never reads a half-written file."""
    for name, text in files.files().items():
        # 600: the configuration may hold the stats password; HAProxy runs as this user.
        replace_file(paths.live / name, text.encode(), mode=0o600, backup=True)

"""Replacing a file so that its readers (HAProxy, a templated program) never see half of it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, mode: int = 0o644, backup: bool = False) -> None:
    """Write ``data`` to a temporary file in ``path``'s directory, keep the previous file
    as ``<name>.bak`` when ``backup``, then rename into place: readers see the old file or
    the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name starts with a dot so that "include conf.d/*.conf" never sees it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if backup and path.exists():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

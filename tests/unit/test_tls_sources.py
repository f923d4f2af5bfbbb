"""HAPROXY_TLS_CERT_DIR: what one scan of the directory reads, and when it says that
something changed."""

from __future__ import annotations

import os
from pathlib import Path

from consul_lb.tls.sources import DirSource


def source(path: Path) -> DirSource:
    return DirSource(path, notify=lambda: None)


def test_bundles_are_the_plain_files(tmp_path: Path) -> None:
    (tmp_path / "www.pem").write_bytes(b"one")
    (tmp_path / ".www.pem.tmp").write_bytes(b"half-written")  # an atomic writer's
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.pem").write_bytes(b"nested")
    (tmp_path / "link.pem").symlink_to(tmp_path / "www.pem")  # e.g. Kubernetes' secrets
    s = source(tmp_path)
    assert s.scan() is True
    assert s.snapshot() == {"www.pem": b"one", "link.pem": b"one"}
    assert s.scan() is False  # nothing changed


def test_a_replaced_or_removed_file_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "www.pem"
    path.write_bytes(b"one")
    s = source(tmp_path)
    s.scan()
    tmp = tmp_path / ".new"
    tmp.write_bytes(b"two")
    os.replace(tmp, path)  # a new inode, whatever the modification time says
    assert s.scan() is True
    assert s.snapshot() == {"www.pem": b"two"}
    path.unlink()
    assert s.scan() is True
    assert s.snapshot() == {}


def test_the_same_content_written_again_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "www.pem"
    path.write_bytes(b"one")
    s = source(tmp_path)
    s.scan()
    os.utime(path, ns=(1, 1))
    assert s.scan() is False


def test_a_missing_directory_is_empty_until_it_appears(tmp_path: Path) -> None:
    s = source(tmp_path / "later")
    assert s.scan() is False
    assert "No such file" in s.problem
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "a.pem").write_bytes(b"x")
    assert s.scan() is True
    assert s.problem == ""


def test_a_huge_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "big.pem").write_bytes(b"x" * (2 << 20))
    s = source(tmp_path)
    s.scan()
    found = s.snapshot()["big.pem"]
    assert isinstance(found, OSError) and "larger than" in str(found.strerror)

"""`invoke push` against a real registry: Debian's docker-registry on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tests.integration.conftest import image_names

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is not installed (scripts/setup-host.sh installs it)"
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            pytest.fail("docker-registry did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_push_then_pull_back_gives_the_same_image(registry: str) -> None:
    names = image_names()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "push",
            "--registry",
            registry,
            "--namespace",
            names.namespace,
            "--tag",
            names.tag,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    client = docker.from_env()
    for name in ("consul-template", "haproxy"):
        remote = f"{registry}/{names.ref(name)}"
        assert f"{remote}@sha256:" in result.stdout
        local_id = client.images.get(names.ref(name)).id
        client.images.remove(remote)
        pulled = client.images.pull(remote)
        assert pulled.id == local_id
        client.images.remove(remote)


def test_push_to_an_unreachable_registry_fails_clearly() -> None:
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "push", "--registry", f"127.0.0.1:{port}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "error: push of" in result.stderr
    assert "connection refused" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    # No registry-named tag is left behind by a push that did not happen.
    leftover = [t for i in docker.from_env().images.list() for t in i.tags if f":{port}/" in t]
    assert leftover == []

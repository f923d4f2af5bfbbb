"""The Debian mirror decided by devtools/mirrors.py reaches mmdebstrap and the Dockerfiles.

The base is bootstrapped and the Consul image built FROM it with DEBIAN_MIRROR (and
DEBIAN_SECURITY_MIRROR) set to the host's own mirror spelled another way (with its port
made explicit), so that what the images' apt sources say can only come from the
variables. These images get names of their own and are removed afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import docker
import pytest

from devtools import images, local_images, mirrors, progress
from tests.integration.conftest import image_names, require_images

pytestmark = pytest.mark.integration
OVERRIDES = ("DEBIAN_MIRROR", "DEBIAN_SECURITY_MIRROR")


def spelled_otherwise(url: str) -> str:
    """The same server and path, written differently: the default port made explicit (or
    left out when the URL names it)."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    netloc = host if parts.port == default else f"{host}:{parts.port or default}"
    return parts._replace(netloc=netloc).geturl()


def cat(client: docker.DockerClient, ref: str, path: str) -> str:
    output: bytes = client.containers.run(ref, [path], entrypoint="cat", remove=True)
    return output.decode()


@pytest.fixture
def own_names() -> Iterator[tuple[str, str]]:
    client = images.client()
    namespace = f"consul-lb-mirror-test-{uuid.uuid4().hex[:8]}"
    refs = (f"{namespace}/debian:trixie", f"{namespace}/consul:test")
    yield refs
    for ref in reversed(refs):
        if images.image_exists(client, ref):
            client.images.remove(ref, force=True)


def test_debian_mirror_reaches_the_base_and_the_consul_image(
    own_names: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    host_env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    host = mirrors.resolve(host_env)
    mirror = spelled_otherwise(host.debian.value)
    assert mirror != host.debian.value
    monkeypatch.setenv("DEBIAN_MIRROR", mirror)
    security = spelled_otherwise(host.security.value) if host.security else ""
    monkeypatch.setenv("DEBIAN_SECURITY_MIRROR", security)
    base_ref, consul_ref = own_names
    client = images.client()
    steps = progress.Progress.from_env()

    with steps.step(f"bootstrapping {base_ref}") as step:
        local_images.bootstrap_base(client, base_ref, step)
    assert f"deb {mirror} trixie main\n" in cat(client, base_ref, "/etc/apt/sources.list")

    with steps.step(f"building {consul_ref}") as step:
        local_images.build_consul_image(client, consul_ref, base_ref, step)
    sources = cat(client, consul_ref, "/etc/apt/sources.list.d/debian.sources")
    assert f"URIs: {mirror}\nSuites: trixie trixie-updates bullseye\n" in sources
    if security:
        assert f"URIs: {security}\nSuites: trixie-security\n" in sources
    version = client.containers.run(consul_ref, ["consul", "version"], remove=True)
    assert version.decode().startswith("Consul v1.8.7")


def test_the_images_under_test_use_the_mirror_in_use() -> None:
    client = images.client()
    names = image_names()
    require_images(client, names.ref("haproxy"), names.ref("consul-template"))
    used = mirrors.resolve()
    for name in ("consul-template", "haproxy"):
        sources = cat(client, names.ref(name), "/etc/apt/sources.list.d/debian.sources")
        assert f"URIs: {used.debian.value}\nSuites: trixie trixie-updates\n" in sources, name

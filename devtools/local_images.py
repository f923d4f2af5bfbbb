"""The images the project's images, the demo and the tests start from, found or made
on this machine.

These machines may have no container registry: the Debian base image is bootstrapped
with mmdebstrap when it can be neither found nor pulled, and the Consul image used by
the demo and the tests (and Pebble, for the ACME tests) is built from Debian's own
packages.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import docker

from devtools import mirrors
from devtools.images import (
    ROOT,
    ImageError,
    apt_mirrors,
    build,
    image_exists,
    present_or_pulled,
)
from devtools.progress import Progress, Step

OFFICIAL_BASE = "debian:trixie-slim"
# A local name that cannot be mistaken for the official image.
LOCAL_BASE = "consul-lb-local/debian:trixie-mmdebstrap"
DEFAULT_CONSUL_IMAGE = "hashicorp/consul:1.20"
LOCAL_CONSUL = "consul-lb-local/consul:1.8.7-debian"
# Pebble (ACME test server) for the ACME integration tests: Debian trixie's package.
LOCAL_PEBBLE = "consul-lb-local/pebble:trixie-debian"


def ensure_debian_base(
    c: docker.DockerClient, wanted: str = OFFICIAL_BASE, steps: Progress | None = None
) -> str:
    """Return a Debian trixie image reference to build FROM."""
    with (steps or Progress.from_env()).step("Debian trixie base image") as step:
        if present_or_pulled(c, wanted, step):
            return wanted
        if wanted != OFFICIAL_BASE:
            raise ImageError(f"base image {wanted} is neither present nor pullable")
        if image_exists(c, LOCAL_BASE):
            step.done = f"{LOCAL_BASE} (bootstrapped earlier with mmdebstrap)"
            return LOCAL_BASE
        bootstrap_base(c, LOCAL_BASE, step)
        return LOCAL_BASE


def bootstrap_base(c: docker.DockerClient, ref: str, step: Step) -> None:
    """Debian trixie from the mirror in use, bootstrapped with mmdebstrap, as ``ref``."""
    found = apt_mirrors(step)
    mirror = mirrors.redact(found.debian.value)
    step.status(f"mmdebstrap from {mirror}")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "rootfs.tar"
        step.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "trixie",
                str(tar),
                *found.mmdebstrap_args("trixie"),
            ],
            env=found.proxy_env(),
        )
        step.status("docker import")
        repo, tag = ref.rsplit(":", 1)
        with tar.open("rb") as fh:
            c.api.import_image_from_data(
                fh.read(),
                repository=repo,
                tag=tag,
                changes=['CMD ["bash"]', "LABEL org.opencontainers.image.base.name=debian:trixie"],
            )
    step.done = f"{ref} (bootstrapped with mmdebstrap from {mirror})"


def consul_dev_command(*extra: str) -> list[str]:
    """A dev-mode Consul agent reachable from other containers, with Consul's DEFAULT
    limits (200 HTTP connections per client address): a raised limit would hide what
    users' agents do."""
    return ["consul", "agent", "-dev", "-client", "0.0.0.0", "-log-level", "warn", *extra]


def ensure_consul_image(c: docker.DockerClient, base: str, steps: Progress | None = None) -> str:
    """The Consul image for the demo and the tests: ``CONSUL_IMAGE`` if pullable, else local."""
    wanted = os.environ.get("CONSUL_IMAGE", DEFAULT_CONSUL_IMAGE)
    with (steps or Progress.from_env()).step("Consul image") as step:
        if present_or_pulled(c, wanted, step):
            return wanted
        if image_exists(c, LOCAL_CONSUL):
            step.done = f"{LOCAL_CONSUL} (built earlier from Debian's consul package)"
            return LOCAL_CONSUL
        build_consul_image(c, LOCAL_CONSUL, base, step)
        step.done = f"{LOCAL_CONSUL} from Debian bullseye's consul package: {step.done}"
        return LOCAL_CONSUL


def build_consul_image(c: docker.DockerClient, ref: str, base: str, step: Step) -> str:
    """Consul from Debian bullseye's package (Consul 1.8.7), FROM ``base``."""
    args = {"BASE_IMAGE": base, **apt_mirrors(step).build_args()}
    return build(c, ROOT / "images" / "consul", ref, args, {}, step)


def ensure_pebble_image(c: docker.DockerClient, base: str, steps: Progress | None = None) -> str:
    """Pebble from Debian trixie's package, FROM ``base``; built once, then reused."""
    with (steps or Progress.from_env()).step("Pebble image (ACME test server)") as step:
        if image_exists(c, LOCAL_PEBBLE):
            step.done = f"{LOCAL_PEBBLE} (built earlier from Debian's pebble package)"
            return LOCAL_PEBBLE
        args = {"BASE_IMAGE": base, **apt_mirrors(step).build_args()}
        build(c, ROOT / "images" / "pebble", LOCAL_PEBBLE, args, {}, step)
        return LOCAL_PEBBLE


def present_consul_image(c: docker.DockerClient) -> str:
    """A Consul image that is already here (``CONSUL_IMAGE``, else the local build), for
    the containers that must not wait on a pull or a build."""
    wanted = os.environ.get("CONSUL_IMAGE", LOCAL_CONSUL)
    for ref in (wanted, LOCAL_CONSUL):
        if image_exists(c, ref):
            return ref
    raise ImageError(f"no Consul image ({wanted} or {LOCAL_CONSUL}): run `invoke base`")

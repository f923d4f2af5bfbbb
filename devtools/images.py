"""Base images, builds and pushes, with the docker SDK.

These machines may have no container registry: the Debian base image is bootstrapped
with mmdebstrap when it can be neither found nor pulled, and the Consul image used by
the demo and the tests is built from Debian's own ``consul`` package.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_BASE = "debian:trixie-slim"
# A local name that cannot be mistaken for the official image.
LOCAL_BASE = "consul-lb-local/debian:trixie-mmdebstrap"
DEFAULT_CONSUL_IMAGE = "hashicorp/consul:1.20"
LOCAL_CONSUL = "consul-lb-local/consul:1.8.7-debian"
# trixie's python3, which the base image runs the runtime with.
IMAGE_PYTHON = "3.13"
SOURCE_URL = "https://github.com/consul-lb/consul-lb"

Progress = Callable[[str], None]


class ImageError(RuntimeError):
    """A build, pull or push failed; the message is the tool's own error line."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def client() -> docker.DockerClient:
    try:
        c = docker.from_env(timeout=600)
        c.ping()
    except docker.errors.DockerException as exc:
        raise ImageError(f"no Docker engine answers ({exc}); run ./dev, which starts one") from exc
    return c


def image_exists(c: docker.DockerClient, ref: str) -> bool:
    try:
        c.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def try_pull(c: docker.DockerClient, ref: str) -> bool:
    """Pull ``ref``; False (not an exception) when no registry can serve it."""
    repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    try:
        c.images.pull(repo, tag=tag)
    except docker.errors.APIError as exc:
        say(f"cannot pull {ref}: {exc.explanation or exc}")
        return False
    return True


def ensure_debian_base(c: docker.DockerClient, wanted: str = OFFICIAL_BASE) -> str:
    """Return a Debian trixie image reference to build FROM."""
    if image_exists(c, wanted):
        say(f"base image: {wanted} (present)")
        return wanted
    if wanted != OFFICIAL_BASE:
        if try_pull(c, wanted):
            return wanted
        raise ImageError(f"base image {wanted} is neither present nor pullable")
    if try_pull(c, wanted):
        say(f"base image: {wanted} (pulled)")
        return wanted
    if image_exists(c, LOCAL_BASE):
        say(f"base image: {LOCAL_BASE} (bootstrapped earlier with mmdebstrap)")
        return LOCAL_BASE
    say(f"{wanted} unavailable: bootstrapping Debian trixie with mmdebstrap as {LOCAL_BASE}")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "rootfs.tar"
        run_checked(
            ["mmdebstrap", "--variant=minbase", "--quiet", "trixie", str(tar)],
            "mmdebstrap",
        )
        repo, tag = LOCAL_BASE.rsplit(":", 1)
        with tar.open("rb") as fh:
            c.api.import_image_from_data(
                fh.read(),
                repository=repo,
                tag=tag,
                changes=['CMD ["bash"]', "LABEL org.opencontainers.image.base.name=debian:trixie"],
            )
    say(f"base image: {LOCAL_BASE} (imported)")
    return LOCAL_BASE


def consul_dev_command(*extra: str) -> list[str]:
    """A dev-mode Consul agent reachable from other containers, with Consul's DEFAULT
    limits (200 HTTP connections per client address): a raised limit would hide what
    users' agents do."""
    return ["consul", "agent", "-dev", "-client", "0.0.0.0", "-log-level", "warn", *extra]


def ensure_consul_image(c: docker.DockerClient, base: str) -> str:
    """The Consul image for the demo and the tests: ``CONSUL_IMAGE`` if pullable, else local."""
    wanted = os.environ.get("CONSUL_IMAGE", DEFAULT_CONSUL_IMAGE)
    if image_exists(c, wanted):
        say(f"consul image: {wanted} (present)")
        return wanted
    if try_pull(c, wanted):
        say(f"consul image: {wanted} (pulled)")
        return wanted
    if image_exists(c, LOCAL_CONSUL):
        say(f"consul image: {LOCAL_CONSUL} (built earlier from Debian's consul package)")
        return LOCAL_CONSUL
    say(f"{wanted} unavailable: building {LOCAL_CONSUL} from Debian bullseye's consul package")
    build(c, ROOT / "images" / "consul", LOCAL_CONSUL, {"BASE_IMAGE": base}, labels={})
    return LOCAL_CONSUL


def present_consul_image(c: docker.DockerClient) -> str:
    """A Consul image that is already here (``CONSUL_IMAGE``, else the local build), for
    the containers that must not wait on a pull or a build."""
    wanted = os.environ.get("CONSUL_IMAGE", LOCAL_CONSUL)
    for ref in (wanted, LOCAL_CONSUL):
        if image_exists(c, ref):
            return ref
    raise ImageError(f"no Consul image ({wanted} or {LOCAL_CONSUL}): run `invoke base`")


def host_port(container: Any, port: int) -> int:
    """The 127.0.0.1 port a container's tcp ``port`` is published on; read again each
    time, as a restarted container may get another one."""
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])


def container_ip(container: Any, network: str | None = None) -> str:
    """A container's address on ``network`` (by default its first network)."""
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    return str((networks[network] if network else next(iter(networks.values())))["IPAddress"])


def run_checked(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ImageError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))


@dataclass(frozen=True)
class ImageNames:
    namespace: str
    tag: str

    def ref(self, name: str, tag: str | None = None) -> str:
        return f"{self.namespace}/{name}:{tag or self.tag}"

    def tags(self, name: str) -> list[str]:
        refs = [self.ref(name)]
        if self.tag != "latest":
            refs.append(self.ref(name, "latest"))
        return refs


def git_revision() -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def oci_labels(version: str, base: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.source": SOURCE_URL,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": git_revision(),
        "org.opencontainers.image.created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": base,
    }


def build_wheelhouse(dest: Path, python_version: str = IMAGE_PYTHON) -> None:
    """Wheels of the runtime and its dependencies for the image's Python, made on the host
    (PyPI is reachable here, not necessarily from inside a build)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    run_checked(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), str(ROOT)],
        "building the runtime's wheel",
    )
    machine = platform.machine()
    deps = [str(d) for d in runtime_dependencies()]
    run_checked(
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
            *deps,
        ],
        f"downloading wheels for Python {python_version}",
    )


def runtime_dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        deps: list[str] = tomllib.load(fh)["project"]["dependencies"]
    return deps


def stream_build_log(chunks: Iterable[Mapping[str, Any]], show: Progress) -> str | None:
    """Print the build's own output; return the image ID, raise with the failing step's line."""
    image_id: str | None = None
    last_lines: list[str] = []
    for chunk in chunks:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            context = " | ".join(line for line in last_lines[-3:] if line)
            raise ImageError(
                f"{detail.strip()}" + (f"\n  last output: {context}" if context else "")
            )
        text = chunk.get("stream")
        if text:
            for line in text.rstrip("\n").splitlines():
                show(line)
                last_lines.append(line.strip())
                last_lines = last_lines[-10:]
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = str(aux["ID"])
    return image_id


def build(
    c: docker.DockerClient,
    context: Path,
    ref: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    extra_tags: Iterable[str] = (),
    show: Progress = say,
) -> str:
    say(f"==> building {ref} from {context.relative_to(ROOT)}")
    chunks = c.api.build(
        path=str(ROOT),
        dockerfile=str((context / "Dockerfile").relative_to(ROOT)),
        tag=ref,
        buildargs=buildargs,
        labels=labels,
        rm=True,
        forcerm=True,
        decode=True,
        network_mode="host",
    )
    image_id = stream_build_log(chunks, show)
    if image_id is None:
        image_id = c.images.get(ref).id
    for extra in extra_tags:
        repo, tag = extra.rsplit(":", 1)
        c.api.tag(image_id, repo, tag)
    say(f"==> built {ref} ({image_id[:19]})")
    return image_id


def build_all(c: docker.DockerClient, names: ImageNames, base: str, version: str) -> None:
    build_wheelhouse(ROOT / "build" / "wheelhouse")
    labels = oci_labels(version, base)
    ct = names.ref("consul-template")
    build(
        c,
        ROOT / "images" / "consul-template",
        ct,
        {"BASE_IMAGE": base},
        {**labels, "org.opencontainers.image.title": "consul-template"},
        names.tags("consul-template")[1:],
    )
    build(
        c,
        ROOT / "images" / "haproxy",
        names.ref("haproxy"),
        {"BASE_IMAGE": ct},
        {
            **labels,
            "org.opencontainers.image.title": "haproxy",
            "org.opencontainers.image.base.name": ct,
        },
        names.tags("haproxy")[1:],
    )


def push_progress(lines: Iterator[Mapping[str, Any]], show: Progress) -> str:
    """Follow a push stream; return the pushed digest or raise with the registry's message."""
    digest = ""
    seen: dict[str, str] = {}
    for line in lines:
        if "error" in line:
            raise ImageError(str(line.get("errorDetail", {}).get("message") or line["error"]))
        status = str(line.get("status", ""))
        layer = str(line.get("id", ""))
        aux = line.get("aux")
        if isinstance(aux, dict) and "Digest" in aux:
            digest = str(aux["Digest"])
        # One line per layer state change, not per progress tick.
        if layer and status and seen.get(layer) != status and status != "Pushing":
            seen[layer] = status
            show(f"  {layer}: {status}")
    if not digest:
        raise ImageError("the registry did not return a digest")
    return digest


def push(c: docker.DockerClient, local_ref: str, remote_ref: str, show: Progress = say) -> str:
    repo, tag = remote_ref.rsplit(":", 1)
    tagged_here = remote_ref != local_ref and not image_exists(c, remote_ref)
    if remote_ref != local_ref:
        c.images.get(local_ref).tag(repo, tag)
    say(f"==> pushing {remote_ref}")
    try:
        stream = c.api.push(repo, tag=tag, stream=True, decode=True)
        digest = push_progress(stream, show)
    except (docker.errors.APIError, ImageError) as exc:
        if tagged_here:
            # Leave no registry-named tag behind for a push that did not happen.
            c.images.remove(remote_ref, noprune=True)
        reason = exc.explanation if isinstance(exc, docker.errors.APIError) else None
        raise ImageError(f"push of {remote_ref} failed: {reason or exc}") from exc
    say(f"==> pushed {remote_ref}@{digest}")
    return digest

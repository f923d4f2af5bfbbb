"""The project's images: builds with progress, names and labels, and pushes, with the
docker SDK (the images they start from: local_images.py)."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from devtools import mirrors, wheelhouse
from devtools.progress import Progress, Step

ROOT = Path(__file__).resolve().parent.parent
SOURCE_URL = "https://github.com/consul-lb/consul-lb"
# The legacy builder's line for each Dockerfile instruction: "Step 3/9 : RUN ...".
BUILD_STEP = re.compile(r"^Step (\d+)/(\d+) :")

Show = Callable[[str], None]


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


def try_pull(c: docker.DockerClient, ref: str, show: Show = say) -> bool:
    """Pull ``ref``; False (not an exception) when no registry can serve it."""
    repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    try:
        c.images.pull(repo, tag=tag)
    except docker.errors.APIError as exc:
        show(f"cannot pull {ref}: {exc.explanation or exc}")
        return False
    return True


def present_or_pulled(c: docker.DockerClient, ref: str, step: Step) -> bool:
    """Whether ``ref`` is here, or could be pulled; the step's line says which."""
    if image_exists(c, ref):
        step.done = f"{ref} (present)"
    elif try_pull(c, ref, step.output):
        step.done = f"{ref} (pulled)"
    else:
        return False
    return True


def apt_mirrors(step: Step) -> mirrors.Mirrors:
    """Where apt gets packages in this step; if the step fails, it says what to set."""
    found = mirrors.resolve()
    step.hint = found.advice()
    step.output(found.describe())
    return found


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


def stream_build_log(chunks: Iterable[Mapping[str, Any]], show: Show) -> str | None:
    """Show the build's output line by line; return the image ID, raise with the failing
    step's error and its last lines."""
    image_id: str | None = None
    last_lines: list[str] = []
    pending = ""  # Docker's chunks do not end at line ends (stderr comes in pieces)

    def emit(line: str) -> None:
        nonlocal last_lines
        show(line)
        if line.strip():
            last_lines = [*last_lines[-9:], line.strip()]

    for chunk in chunks:
        if "error" in chunk:
            if pending:
                emit(pending)
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            context = " | ".join(last_lines[-3:])
            raise ImageError(
                f"{detail.strip()}" + (f"\n  last output: {context}" if context else "")
            )
        *lines, pending = (pending + chunk.get("stream", "")).split("\n")
        for line in lines:
            emit(line)
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = str(aux["ID"])
    if pending:
        emit(pending)
    return image_id


def build(
    c: docker.DockerClient,
    context: Path,
    ref: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    step: Step,
    extra_tags: Iterable[str] = (),
) -> str:
    """Build ``context``'s Dockerfile as ``ref``; the step shows Docker's step count."""
    step.output(f"building {ref} from {context.relative_to(ROOT)}")
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
    at = total = "?"

    def show(line: str) -> None:
        nonlocal at, total
        step.output(line)
        match = BUILD_STEP.match(line)
        if match:
            at, total = match[1], match[2]
            step.status(f"step {at}/{total}")

    try:
        image_id = stream_build_log(chunks, show)
    except ImageError as exc:
        # Docker's message repeats the whole RUN line; the step's last lines show it.
        code = re.search(r"returned a non-zero code: \d+", str(exc))
        what = code[0] if code else str(exc).splitlines()[0][:200]
        dockerfile = (context / "Dockerfile").relative_to(ROOT)
        raise ImageError(f"step {at}/{total} of {dockerfile} {what}") from exc
    if image_id is None:
        image_id = c.images.get(ref).id
    for extra in extra_tags:
        repo, tag = extra.rsplit(":", 1)
        c.api.tag(image_id, repo, tag)
    step.done = f"built in {total} steps ({image_id[:19]})"
    return image_id


def build_all(
    c: docker.DockerClient,
    names: ImageNames,
    base: str,
    version: str,
    steps: Progress | None = None,
) -> None:
    steps = steps or Progress.from_env()
    with steps.step("wheelhouse: the runtime and its dependencies") as step:
        wheelhouse.build(step)
    labels = oci_labels(version, base)
    ct = names.ref("consul-template")
    with steps.step(f"building {ct}") as step:
        build(
            c,
            ROOT / "images" / "consul-template",
            ct,
            {"BASE_IMAGE": base, **apt_mirrors(step).build_args()},
            {**labels, "org.opencontainers.image.title": "consul-template"},
            step,
            names.tags("consul-template")[1:],
        )
    with steps.step(f"building {names.ref('haproxy')}") as step:
        build(
            c,
            ROOT / "images" / "haproxy",
            names.ref("haproxy"),
            {"BASE_IMAGE": ct, **apt_mirrors(step).build_args()},
            {
                **labels,
                "org.opencontainers.image.title": "haproxy",
                "org.opencontainers.image.base.name": ct,
            },
            step,
            names.tags("haproxy")[1:],
        )


def push_progress(lines: Iterator[Mapping[str, Any]], show: Show) -> str:
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


def push(c: docker.DockerClient, local_ref: str, remote_ref: str, show: Show = say) -> str:
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

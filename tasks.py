"""Invoke tasks: base images, build, push, test, lint, demo and deploy.

Run them through ``./dev TASK`` on a fresh machine (it installs what is missing first),
or with ``invoke TASK`` from the project's virtualenv. Long steps show one progress line
each (devtools/progress.py); ``--verbose`` shows every tool's output instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from devtools import demo as demo_stack
from devtools import images, mirrors, progress

ROOT = Path(__file__).resolve().parent
DEFAULT_NAMESPACE = "consul-lb"
DEFAULT_TAG = "latest"


def _version() -> str:
    from importlib.metadata import version

    return version("consul-lb")


VERBOSE = (
    "show every tool's output as it comes (default: one line per step, the output in build/logs/)"
)


def _fail(exc: BaseException) -> Exit:
    return Exit(f"error: {exc}", code=1)


@contextmanager
def _reported() -> Iterator[None]:
    """Our errors as one line and exit status 1 (a failed step has printed its details)."""
    try:
        yield
    except (progress.StepFailed, images.ImageError, mirrors.MirrorError) as exc:
        raise _fail(exc) from None


@task(
    help={
        "base_image": "Debian trixie image to build FROM (default: debian:trixie-slim, "
        "bootstrapped with mmdebstrap when it cannot be pulled)",
        "verbose": VERBOSE,
    }
)
def base(c: Context, base_image: str = images.OFFICIAL_BASE, verbose: bool = False) -> None:
    """Make the Debian base image and the Consul image available (pull or build locally)."""
    with _reported():
        _base(progress.Progress.from_env(verbose), base_image)


def _base(
    steps: progress.Progress, base_image: str = images.OFFICIAL_BASE
) -> tuple[docker.DockerClient, str, str]:
    """The Docker client, the Debian base image and the Consul image."""
    client = images.client()
    ref = images.ensure_debian_base(client, base_image, steps)
    return client, ref, images.ensure_consul_image(client, ref, steps)


@task(
    help={
        "namespace": f"image namespace (default {DEFAULT_NAMESPACE})",
        "tag": f"image tag (default {DEFAULT_TAG}; 'latest' is always tagged too)",
        "base_image": "Debian trixie image to build FROM (default: debian:trixie-slim or its "
        "local mmdebstrap bootstrap)",
        "verbose": VERBOSE,
    }
)
def build(
    c: Context,
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    base_image: str = images.OFFICIAL_BASE,
    verbose: bool = False,
) -> None:
    """Build NS/consul-template:TAG, then NS/haproxy:TAG FROM it, with OCI labels."""
    with _reported():
        steps = progress.Progress.from_env(verbose)
        client = images.client()
        ref = images.ensure_debian_base(client, base_image, steps)
        images.build_all(client, images.ImageNames(namespace, tag), ref, _version(), steps)


@task(
    help={
        "registry": "HOST[:PORT] of the registry (default: Docker Hub)",
        "namespace": f"image namespace (default {DEFAULT_NAMESPACE})",
        "tag": f"image tag (default {DEFAULT_TAG})",
    }
)
def push(
    c: Context, registry: str = "", namespace: str = DEFAULT_NAMESPACE, tag: str = DEFAULT_TAG
) -> None:
    """Push NS/consul-template:TAG and NS/haproxy:TAG; print each pushed digest."""
    names = images.ImageNames(namespace, tag)
    try:
        client = images.client()
        for name in ("consul-template", "haproxy"):
            local = names.ref(name)
            if not images.image_exists(client, local):
                raise images.ImageError(f"{local} does not exist; run invoke build first")
            remote = f"{registry.rstrip('/')}/{local}" if registry else local
            digest = images.push(client, local, remote)
            print(f"{remote}@{digest}")
    except images.ImageError as exc:
        raise _fail(exc) from None


@task
def lint(c: Context) -> None:
    """Run ruff (lint and format check) and mypy."""
    py = sys.executable
    c.run(f"{py} -m ruff check .", pty=False)
    c.run(f"{py} -m ruff format --check .", pty=False)
    c.run(f"{py} -m mypy", pty=False)


@task(
    help={
        "unit": "run the unit tests only (no Docker)",
        "integration": "run the integration tests only",
        "k": "only tests matching this pytest -k expression",
        "namespace": "namespace of the images under test",
        "tag": "tag of the images under test",
        "verbose": VERBOSE,
    }
)
def test(
    c: Context,
    unit: bool = False,
    integration: bool = False,
    k: str = "",
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    verbose: bool = False,
) -> None:
    """Run the unit tests, then build the images and run the integration tests."""
    select = f" -k {k!r}" if k else ""
    both = not unit and not integration
    if unit or both:
        c.run(f"{sys.executable} -m pytest tests/unit -q{select}", pty=False)
    if integration or both:
        with _reported():
            steps = progress.Progress.from_env(verbose)
            client, ref, _ = _base(steps)
            images.build_all(client, images.ImageNames(namespace, tag), ref, _version(), steps)
        env = {"CONSUL_LB_IMAGE_NAMESPACE": namespace, "CONSUL_LB_IMAGE_TAG": tag}
        c.run(f"{sys.executable} -m pytest tests/integration -q -rs{select}", env=env, pty=False)


@task(
    help={
        "down": "stop and remove the demo's containers",
        "consul": "use this Consul (host:port reachable from the containers) instead of "
        "starting the embedded dev-mode Consul",
        "namespace": "namespace of the images to run",
        "tag": "tag of the images to run",
        "no_build": "do not (re)build the images first",
        "verbose": VERBOSE,
    }
)
def demo(
    c: Context,
    down: bool = False,
    consul: str = "",
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    no_build: bool = False,
    verbose: bool = False,
) -> None:
    """Run Consul (dev mode), the HAProxy image and two sample backends on this host."""
    names = images.ImageNames(namespace, tag)
    with _reported():
        steps = progress.Progress.from_env(verbose)
        if down:
            demo_stack.down(names, steps)
            return
        client, ref, consul_image = _base(steps)
        if not no_build:
            images.build_all(client, names, ref, _version(), steps)
        demo_stack.up(names, consul, consul_image, steps)
    demo_stack.print_guide()


@task(help={"all": "also remove the base and Consul images"})
def clean(c: Context, all: bool = False) -> None:
    """Remove build/ (the wheelhouse and the logs), and with --all the local base images."""
    c.run(f"rm -rf {ROOT / 'build'}")
    if all:
        for ref in (images.LOCAL_BASE, images.LOCAL_CONSUL):
            c.run(f"docker image rm -f {ref}", warn=True)


@task(
    help={
        "marathon": "Marathon's base URL, e.g. http://marathon.example.org:8080 (required)",
        "app_id": "Marathon app id (default /consul-lb/haproxy)",
        "instances": "number of HAProxy instances (default: the shipped definition's)",
        "namespace": "image namespace",
        "tag": "image tag",
        "strategy": "reload strategy: seamless (default) or syn-drop (adds NET_ADMIN)",
        "domain": "HAPROXY_DOM for the instances (default: the shipped definition's)",
        "consul_addr": "CONSUL_HTTP_ADDR for the instances (default 127.0.0.1:8500)",
        "force": "replace a deployment of this app that is still in progress",
        "timeout": "seconds to follow the deployment before giving up (default 600)",
        "user": "HTTP basic auth USER:PASS (or MARATHON_USER/MARATHON_PASSWORD; "
        "MARATHON_TOKEN for a DC/OS token)",
    }
)
def deploy(
    c: Context,
    marathon: str,
    app_id: str = "",
    instances: int = 0,
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    strategy: str = "seamless",
    domain: str = "",
    consul_addr: str = "",
    force: bool = False,
    timeout: float = 600.0,
    user: str = "",
) -> None:
    """Render and validate the Marathon app definition, PUT it, follow the deployment."""
    from devtools import marathon as mt

    try:
        app = mt.render_app(
            app_id=app_id or mt.DEFAULT_APP_ID,
            instances=instances or int(mt.load_app()["instances"]),
            image=mt.image_reference(namespace, tag),
            strategy=strategy,
            domain=domain or None,
            consul_addr=consul_addr or None,
        )
        mt.validate_app(app)
        auth, token = mt.credentials(user or None, os.environ)
        mt.deploy(
            marathon_url=marathon,
            app=app,
            force=force,
            timeout=timeout,
            poll_interval=2.0,
            auth=auth,
            token=token,
            progress=print,
        )
    except (mt.AppDefinitionError, mt.DeployError, ValueError) as exc:
        raise _fail(exc) from None


BENCHES = ("reload", "render", "converge")


@task(
    help={
        "name": f"which benchmark: {', '.join(BENCHES)}",
        "duration": "reload: seconds under load per strategy and mode (default 30)",
        "interval": "reload: seconds between two reloads (default 0.1)",
        "strategies": "reload: comma-separated subset of none,naive,syn-drop,seamless",
        "rounds": "converge: registrations to time (default 100)",
        "namespace": "namespace of the images to measure",
        "tag": "tag of the images to measure",
    }
)
def bench(
    c: Context,
    name: str,
    duration: float = 30.0,
    interval: float = 0.1,
    strategies: str = "none,naive,syn-drop,seamless",
    rounds: int = 100,
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
) -> None:
    """Run a benchmark (reload, render, converge) against the built images and print a table."""
    names = images.ImageNames(namespace, tag)
    if name == "reload":
        from devtools import bench_reload

        bench_reload.main(names, duration, interval, tuple(strategies.split(",")))
    elif name == "converge":
        from devtools import bench_converge

        bench_converge.main(names, rounds)
    elif name == "render":
        from devtools import bench_render

        bench_render.main(names)
    else:
        raise Exit(f"error: unknown benchmark {name!r}; choose one of {', '.join(BENCHES)}")

"""Invoke tasks: base images, build, push, test, lint, demo and deploy.

Run them through ``./dev TASK`` on a fresh machine (it installs what is missing first),
or with ``invoke TASK`` from the project's virtualenv. Long steps show one progress line
each (devtools/progress.py); ``--verbose`` shows every tool's output instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.program import Program
from invoke.tasks import task as invoke_task

from devtools import demo as demo_stack
from devtools import images, local_images, mirrors, progress

ROOT = Path(__file__).resolve().parent
DEFAULT_NAMESPACE = "consul-lb"
DEFAULT_TAG = "latest"


def _version() -> str:
    from importlib.metadata import version

    return version("consul-lb")


# No automatic short flags: Invoke made them from the first free letter, so -n meant --name
# in bench and --namespace elsewhere, and -d --down, --domain or --duration. Only test's -k
# (pytest's) is short: its parameter is one letter.
task = functools.partial(invoke_task, auto_shortflags=False)
# Value options are strings parsed here (`_number`): Invoke shows FLOAT options like on/off
# flags in --help, and answers a bad INT with a traceback.
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


def _number(option: str, raw: str, kind: type[int] | type[float], minimum: float) -> float:
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "a whole number" if kind is int else "a number"
        raise Exit(f"error: --{option}: expected {what} of {minimum:g} or more, got {raw!r}", 1)
    return value


@task(
    help={
        "base_image": "IMAGE: the Debian trixie image to build FROM (default: debian:trixie-slim, "
        "bootstrapped with mmdebstrap when it cannot be pulled)",
        "verbose": VERBOSE,
    }
)
def base(c: Context, base_image: str = local_images.OFFICIAL_BASE, verbose: bool = False) -> None:
    """Make the Debian base image and the Consul image available (pull or build locally)."""
    with _reported():
        _base(progress.Progress.from_env(verbose), base_image)


def _base(
    steps: progress.Progress, base_image: str = local_images.OFFICIAL_BASE
) -> tuple[docker.DockerClient, str, str]:
    """The Docker client, the Debian base image and the Consul image."""
    client = images.client()
    ref = local_images.ensure_debian_base(client, base_image, steps)
    return client, ref, local_images.ensure_consul_image(client, ref, steps)


@task(
    help={
        "namespace": f"NS: image namespace (default {DEFAULT_NAMESPACE})",
        "tag": f"TAG: image tag (default {DEFAULT_TAG}; 'latest' is always tagged too)",
        "base_image": "IMAGE: the Debian trixie image to build FROM (default: "
        "debian:trixie-slim or its local mmdebstrap bootstrap)",
        "verbose": VERBOSE,
    }
)
def build(
    c: Context,
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    base_image: str = local_images.OFFICIAL_BASE,
    verbose: bool = False,
) -> None:
    """Build NS/consul-template:TAG, then NS/haproxy:TAG FROM it, with OCI labels."""
    with _reported():
        steps = progress.Progress.from_env(verbose)
        client = images.client()
        ref = local_images.ensure_debian_base(client, base_image, steps)
        images.build_all(client, images.ImageNames(namespace, tag), ref, _version(), steps)


@task(
    help={
        "registry": "HOST[:PORT] of the registry (default: Docker Hub)",
        "namespace": f"NS: image namespace (default {DEFAULT_NAMESPACE})",
        "tag": f"TAG: image tag (default {DEFAULT_TAG})",
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
        "k": "EXPR: only tests matching this pytest -k expression",
        "namespace": f"NS: namespace of the images under test (default {DEFAULT_NAMESPACE})",
        "tag": f"TAG: tag of the images under test (default {DEFAULT_TAG})",
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
            local_images.ensure_pebble_image(client, ref, steps)  # the ACME server of test_acme.py
        env = {"CONSUL_LB_IMAGE_NAMESPACE": namespace, "CONSUL_LB_IMAGE_TAG": tag}
        c.run(f"{sys.executable} -m pytest tests/integration -q -rs{select}", env=env, pty=False)


@task(
    help={
        "down": "stop and remove the demo's containers (builds and pulls nothing)",
        "consul": "HOST:PORT of a Consul reachable from the containers, used instead of "
        "starting the embedded dev-mode Consul",
        "namespace": f"NS: namespace of the images to run (default {DEFAULT_NAMESPACE})",
        "tag": f"TAG: tag of the images to run (default {DEFAULT_TAG})",
        "no_build": "run the images as they are (default: build them first)",
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


@task(help={"all": "also remove the base, Consul and Pebble images"})
def clean(c: Context, all: bool = False) -> None:
    """Remove build/ (the wheelhouse and the logs), and with --all the local base images."""
    c.run(f"rm -rf {ROOT / 'build'}")
    if all:
        for ref in (local_images.LOCAL_BASE, local_images.LOCAL_CONSUL, local_images.LOCAL_PEBBLE):
            c.run(f"docker image rm -f {ref}", warn=True)


@task(
    help={
        "marathon": "URL: Marathon's base URL, e.g. http://marathon.example.org:8080 (required)",
        "app_id": "ID: the Marathon app id (default /consul-lb/haproxy)",
        "instances": "N: how many HAProxy instances, 0 or more (default: the shipped definition's)",
        "namespace": f"NS: image namespace (default {DEFAULT_NAMESPACE})",
        "tag": f"TAG: image tag (default {DEFAULT_TAG})",
        "strategy": "S: reload strategy, seamless (default) or syn-drop (adds NET_ADMIN)",
        "domain": "DOM: HAPROXY_DOM of the instances, a DNS name such as example.com "
        "(default: the shipped definition's)",
        "consul_addr": "HOST:PORT: CONSUL_HTTP_ADDR of the instances (default 127.0.0.1:8500)",
        "force": "replace a deployment of this app that is still in progress",
        "timeout": "SECONDS to follow the deployment before giving up (default 600)",
        "user": "USER:PASS for HTTP basic auth (or MARATHON_USER/MARATHON_PASSWORD; "
        "MARATHON_TOKEN for a DC/OS token)",
    }
)
def deploy(
    c: Context,
    marathon: str = "",
    app_id: str = "",
    instances: str = "",
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    strategy: str = "seamless",
    domain: str = "",
    consul_addr: str = "",
    force: bool = False,
    timeout: str = "600",
    user: str = "",
) -> None:
    """Render and validate the Marathon app definition, PUT it, follow the deployment."""
    from devtools import marathon as mt

    if not marathon:
        raise Exit(
            "error: deploy needs Marathon's base URL: invoke deploy --marathon URL, e.g. "
            "--marathon http://marathon.example.org:8080 (invoke --help deploy shows all options)",
            code=1,
        )
    # "" (not 0) means the shipped definition's count: 0 instances is a real request.
    count = int(_number("instances", instances, int, 0)) if instances else None
    seconds = _number("timeout", timeout, float, 0)
    try:
        dom = mt.domain_name(domain) if domain else None
    except ValueError as exc:
        raise Exit(f"error: --domain: {exc}", code=1) from None
    try:
        app = mt.render_app(
            app_id=app_id or mt.DEFAULT_APP_ID,
            instances=count,
            image=mt.image_reference(namespace, tag),
            strategy=strategy,
            domain=dom,
            consul_addr=consul_addr or None,
        )
        mt.validate_app(app)
        auth, token = mt.credentials(user or None, os.environ)
        mt.deploy(
            marathon_url=marathon,
            app=app,
            force=force,
            timeout=seconds,
            poll_interval=2.0,
            auth=auth,
            token=token,
            progress=print,
        )
    except (mt.AppDefinitionError, mt.DeployError, ValueError) as exc:
        raise _fail(exc) from None


BENCHES = ("reload", "scale", "converge", "tls")


BENCH_HELP = {
    "name": f"NAME: which benchmark, one of {', '.join(BENCHES)} (the first argument; "
    "'render' is the former name of 'scale')",
    "duration": "SECONDS under load: per strategy and mode for reload (default 30), per row "
    "for tls (default 10)",
    "interval": "SECONDS between two reloads, for reload (default 0.1)",
    "strategies": "LIST: comma-separated subset of none,naive,syn-drop,seamless, for reload",
    "rounds": "N registrations to time, for converge (default 100); for scale, changes to "
    "time on each path at 100 services (default 50), fewer at larger sizes (N divided by the "
    "square root of the growth, at least 5: 16 at 1,000 and 8 at 5,000 by default)",
    "sizes": "LIST: comma-separated numbers of services (5 instances each), for scale "
    "(default 100,1000,5000)",
    "render_wait": "MIN:MAX: HAPROXY_RENDER_WAIT of the load balancer under test, for scale "
    "(default 10ms:100ms, as the issue's targets; the image's own default is 100ms:1s)",
    "namespace": f"NS: namespace of the images to measure (default {DEFAULT_NAMESPACE})",
    "tag": f"TAG: tag of the images to measure (default {DEFAULT_TAG})",
}


@task(help=BENCH_HELP)
def bench(
    c: Context,
    name: str,
    duration: str = "",
    interval: str = "0.1",
    strategies: str = "none,naive,syn-drop,seamless",
    rounds: str = "",
    sizes: str = "100,1000,5000",
    render_wait: str = "10ms:100ms",
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
) -> None:
    """Run a benchmark (reload, scale, converge, tls) against the built images; print a table."""
    if name in ("-h", "--help"):
        # Invoke gives a --help right after the task to its first argument, NAME. Its parser
        # has used up the task's help texts by now: show them from a new copy of the task.
        fresh = Collection(task(bench.body, help=BENCH_HELP))
        Program(namespace=fresh, binary="inv[oke]").run(["inv[oke]", "--help", "bench"])
        return
    names = images.ImageNames(namespace, tag)
    if name == "reload":
        from devtools import bench_reload

        bench_reload.main(
            names,
            _number("duration", duration or "30", float, 1),
            _number("interval", interval, float, 0.001),
            tuple(strategies.split(",")),
        )
    elif name == "converge":
        from devtools import bench_converge

        bench_converge.main(names, int(_number("rounds", rounds or "100", int, 1)))
    elif name in ("scale", "render"):
        from devtools import bench_scale

        counts = tuple(
            int(_number("sizes", n.strip().replace("_", ""), int, 2)) for n in sizes.split(",")
        )
        bench_scale.main(
            names,
            counts,
            int(_number("rounds", rounds or str(bench_scale.ROUNDS), int, 1)),
            render_wait,
        )
    elif name == "tls":
        from devtools import bench_tls

        bench_tls.main(names, _number("duration", duration or "10", float, 1))
    else:
        raise Exit(f"error: unknown benchmark {name!r}; choose one of {', '.join(BENCHES)}")

"""Invoke tasks: base images, build, push, test, lint, demo and deploy.

Run them through ``./dev TASK`` on a fresh machine (it installs what is missing first),
or with ``invoke TASK`` from the project's virtualenv.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from devtools import images

ROOT = Path(__file__).resolve().parent
DEFAULT_NAMESPACE = "consul-lb"
DEFAULT_TAG = "latest"
DEMO_DIR = ROOT / "deploy" / "demo"
DEMO_DOMAIN = "demo.localhost"


def _version() -> str:
    from importlib.metadata import version

    return version("consul-lb")


def _fail(exc: BaseException) -> Exit:
    return Exit(f"error: {exc}", code=1)


@task(
    help={
        "base_image": "Debian trixie image to build FROM (default: debian:trixie-slim, "
        "bootstrapped with mmdebstrap when it cannot be pulled)"
    }
)
def base(c: Context, base_image: str = images.OFFICIAL_BASE) -> None:
    """Make the Debian base image and the Consul image available (pull or build locally)."""
    try:
        client = images.client()
        ref = images.ensure_debian_base(client, base_image)
        images.ensure_consul_image(client, ref)
    except images.ImageError as exc:
        raise _fail(exc) from None


@task(
    help={
        "namespace": f"image namespace (default {DEFAULT_NAMESPACE})",
        "tag": f"image tag (default {DEFAULT_TAG}; 'latest' is always tagged too)",
        "base_image": "Debian trixie image to build FROM (default: debian:trixie-slim or its "
        "local mmdebstrap bootstrap)",
    }
)
def build(
    c: Context,
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    base_image: str = images.OFFICIAL_BASE,
) -> None:
    """Build NS/consul-template:TAG, then NS/haproxy:TAG FROM it, with OCI labels."""
    try:
        client = images.client()
        ref = images.ensure_debian_base(client, base_image)
        images.build_all(client, images.ImageNames(namespace, tag), ref, _version())
    except images.ImageError as exc:
        raise _fail(exc) from None


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
    }
)
def test(
    c: Context,
    unit: bool = False,
    integration: bool = False,
    k: str = "",
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
) -> None:
    """Run the unit tests, then build the images and run the integration tests."""
    select = f" -k {k!r}" if k else ""
    both = not unit and not integration
    if unit or both:
        c.run(f"{sys.executable} -m pytest tests/unit -q{select}", pty=False)
    if integration or both:
        base(c)
        build(c, namespace=namespace, tag=tag)
        env = {"CONSUL_LB_IMAGE_NAMESPACE": namespace, "CONSUL_LB_IMAGE_TAG": tag}
        c.run(f"{sys.executable} -m pytest tests/integration -q -rs{select}", env=env, pty=False)


def _demo_env(namespace: str, tag: str, consul: str) -> dict[str, str]:
    client = images.client()
    names = images.ImageNames(namespace, tag)
    env = {
        "HAPROXY_IMAGE": names.ref("haproxy"),
        "BACKEND_IMAGE": names.ref("consul-template"),
        "HAPROXY_DOM": DEMO_DOMAIN,
        "CONSUL_HTTP_ADDR": consul or "consul:8500",
        "CONSUL_IMAGE": images.ensure_consul_image(client, images.ensure_debian_base(client)),
    }
    return env


def _consul_put(base_url: str, path: str, body: dict[str, object]) -> None:
    req = urllib.request.Request(f"{base_url}{path}", data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=5):
        pass


def _wait_http(url: str, timeout: float, host: str | None = None) -> bytes:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        req = urllib.request.Request(url, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                body: bytes = resp.read()
                return body
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            time.sleep(0.5)
    raise Exit(f"error: {url} did not answer within {timeout:.0f}s ({last})", code=1)


@task(
    help={
        "down": "stop and remove the demo's containers",
        "consul": "use this Consul (host:port reachable from the containers) instead of "
        "starting the embedded dev-mode Consul",
        "namespace": "namespace of the images to run",
        "tag": "tag of the images to run",
        "no_build": "do not (re)build the images first",
    }
)
def demo(
    c: Context,
    down: bool = False,
    consul: str = "",
    namespace: str = DEFAULT_NAMESPACE,
    tag: str = DEFAULT_TAG,
    no_build: bool = False,
) -> None:
    """Run Consul (dev mode), the HAProxy image and two sample backends on this host."""
    compose = f"docker compose -f {DEMO_DIR / 'compose.yaml'} --profile embedded-consul"
    if down:
        c.run(f"{compose} down --remove-orphans --timeout 5", env=_demo_env(namespace, tag, consul))
        return
    if not no_build:
        base(c)
        build(c, namespace=namespace, tag=tag)
    env = _demo_env(namespace, tag, consul)
    profile = compose if not consul else compose.replace(" --profile embedded-consul", "")
    c.run(f"{profile} up -d --wait --remove-orphans", env=env, pty=False)
    consul_url = "http://127.0.0.1:8500" if not consul else f"http://{consul}"
    print(f"==> registering web-1 and web-2 as service 'web' in Consul at {consul_url}")
    _wait_http(f"{consul_url}/v1/status/leader", 30)
    for name in ("web-1", "web-2"):
        _consul_put(
            consul_url,
            "/v1/agent/service/register",
            {
                "ID": name,
                "Name": "web",
                "Address": name,
                "Port": 8000,
                "Tags": ["HAPROXY.ENABLE=true"],
                "Check": {"HTTP": f"http://{name}:8000/", "Interval": "2s"},
            },
        )
    host = f"web.{DEMO_DOMAIN}"
    body = _wait_http("http://127.0.0.1:8080/", 60, host=host)
    print(f"==> HAProxy answers for {host}: {body.decode()[:200]}")
    print("==> try it:")
    print(f"    curl -H 'Host: {host}' http://127.0.0.1:8080/")
    stats = "http://127.0.0.1:4444"
    print("==> where to look (all on the stats port):")
    print(f"    stats page:   {stats}/            (CSV: {stats}/;csv)")
    print(f"    metrics:      {stats}/metrics     (Prometheus: the runtime's and HAProxy's)")
    print(f"    state:        {stats}/_consul_lb/state   (published and skipped services)")
    print(f"    config:       {stats}/_haproxy_getconfig (the haproxy.cfg HAProxy runs)")
    print(f"    health:       {stats}/_haproxy_health_check")
    print("    logs:         docker logs -f consul-lb-demo-haproxy-1")
    print("==> stop it:      ./dev demo --down")


@task(help={"all": "also remove the base and Consul images"})
def clean(c: Context, all: bool = False) -> None:
    """Remove build artefacts (the wheelhouse), and with --all the local base images."""
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

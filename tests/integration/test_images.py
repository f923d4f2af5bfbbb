"""The two images as users get them."""

from __future__ import annotations

import docker

from tests.integration.conftest import image_names, run_to_exit


def test_haproxy_image_runs_haproxy_3() -> None:
    client = docker.from_env()
    out = client.containers.run(
        image_names().ref("haproxy"), ["-vv"], entrypoint="haproxy", remove=True
    ).decode()
    assert out.startswith("HAProxy version 3.")
    assert "Prometheus exporter" in out or "PROMEX" in out


def test_haproxy_image_is_built_on_the_consul_template_image() -> None:
    client = docker.from_env()
    names = image_names()
    base_layers = client.api.inspect_image(names.ref("consul-template"))["RootFS"]["Layers"]
    lb = client.api.inspect_image(names.ref("haproxy"))
    assert lb["RootFS"]["Layers"][: len(base_layers)] == base_layers
    labels = lb["Config"]["Labels"]
    for key in ("source", "version", "revision", "created"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.base.name"] == names.ref("consul-template")


def test_images_run_as_non_root_with_tini() -> None:
    client = docker.from_env()
    for name in ("consul-template", "haproxy"):
        config = client.api.inspect_image(image_names().ref(name))["Config"]
        assert config["User"] not in ("", "root", "0"), name
        assert config["Entrypoint"][0] == "/usr/bin/tini", name


def test_missing_domain_is_a_clear_error() -> None:
    code, logs = run_to_exit(image_names().ref("haproxy"))
    assert code == 2
    assert "HAPROXY_DOM is required" in logs

"""HAProxy follows Consul: registration, deregistration, health, Host matching, tcp."""

from __future__ import annotations

import socket
from pathlib import Path

import requests

from tests.integration.conftest import DOMAIN, Stack, image_names, wait_until

ENABLE = "HAPROXY.ENABLE=true"


def test_registered_service_is_routed_and_deregistered_one_is_not(stack: Stack) -> None:
    host = f"www.{DOMAIN}"
    assert stack.get(host).status_code == 503  # not published yet

    stack.register("www-1", "www", "web-1", [ENABLE])
    assert wait_until(lambda: stack.backend_of(host), what="www routed") == "web-1"
    forwarded = stack.get(host).json()["headers"]
    assert forwarded["x-forwarded-port"] == "8080"
    assert "x-forwarded-for" in forwarded

    stack.deregister("www-1")
    wait_until(lambda: stack.get(host).status_code == 503, what="www no longer routed")


def test_instances_are_balanced_and_follow_changes(stack: Stack) -> None:
    host = f"app.{DOMAIN}"
    stack.register("app-1", "app", "web-1", [ENABLE])
    stack.register("app-2", "app", "web-2", [ENABLE])

    def both_seen() -> bool:
        return {stack.backend_of(host) for _ in range(6)} == {"web-1", "web-2"}

    wait_until(both_seen, what="both instances answering")
    stack.deregister("app-1")
    wait_until(
        lambda: {stack.backend_of(host) for _ in range(6)} == {"web-2"}, what="only web-2 answering"
    )


def test_failing_health_check_takes_instance_out(stack: Stack) -> None:
    host = f"checked.{DOMAIN}"
    stack.register("checked-1", "checked", "web-1", [ENABLE], check={"TTL": "60s"})
    stack.register("checked-2", "checked", "web-2", [ENABLE], check={"TTL": "60s"})
    stack.ttl("checked-1", "pass")
    stack.ttl("checked-2", "pass")
    wait_until(
        lambda: {stack.backend_of(host) for _ in range(6)} == {"web-1", "web-2"},
        what="both passing instances answering",
    )

    stack.ttl("checked-1", "fail")
    wait_until(
        lambda: {stack.backend_of(host) for _ in range(6)} == {"web-2"},
        what="failing instance taken out",
    )
    stack.ttl("checked-1", "pass")
    wait_until(
        lambda: {stack.backend_of(host) for _ in range(6)} == {"web-1", "web-2"},
        what="recovered instance back in",
    )


def test_host_header_with_port_and_upper_case_routes(stack: Stack) -> None:
    stack.register("cased-1", "cased", "web-3", [ENABLE])
    wait_until(lambda: stack.backend_of(f"cased.{DOMAIN}"), what="cased routed")
    assert stack.backend_of(f"CASED.{DOMAIN.upper()}") == "web-3"
    assert stack.backend_of(f"Cased.{DOMAIN}:8080") == "web-3"
    assert stack.backend_of(f"cased.{DOMAIN}.other") is None


def test_tcp_service_on_its_own_port(stack: Stack) -> None:
    stack.register(
        "raw-1", "raw", "web-2", [ENABLE, "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9000"]
    )

    def tcp_answer() -> bytes:
        with socket.create_connection(("127.0.0.1", stack.tcp_port), timeout=2) as sock:
            # Plain bytes through a tcp-mode proxy: no Host routing is involved.
            sock.sendall(b"GET /tcp HTTP/1.0\r\n\r\n")
            # HTTP/1.0: the backend closes once it has answered; read until then.
            return b"".join(iter(lambda: sock.recv(4096), b""))

    answer = wait_until(lambda: _safe(tcp_answer), what="tcp frontend answering")
    assert b"web-2" in answer and b"/tcp" in answer


def _safe(fn: object) -> bytes:
    try:
        return fn()  # type: ignore[operator, no-any-return]
    except OSError:
        return b""


def test_bad_service_is_skipped_and_others_keep_working(stack: Stack) -> None:
    stack.register("good-1", "good", "web-1", [ENABLE])
    wait_until(lambda: stack.backend_of(f"good.{DOMAIN}"), what="good routed")

    stack.register("bad-1", "Bad_Name", "web-2", [ENABLE])
    stack.register(
        "evil-1",
        "evil",
        "web-2",
        [ENABLE, "HAPROXY.BACKEND.BALANCE=roundrobin\n    server x 1.2.3.4:80"],
    )
    stack.register("good-2", "good", "web-2", [ENABLE])

    wait_until(
        lambda: {stack.backend_of(f"good.{DOMAIN}") for _ in range(6)} == {"web-1", "web-2"},
        what="change made next to bad services applied",
    )
    logs = wait_until(
        lambda: (lg := stack.logs()) and "'evil'" in lg and "'Bad_Name'" in lg and lg,
        what="skip lines in the logs",
    )
    assert "skipping service 'Bad_Name'" in logs
    assert "skipping service 'evil'" in logs
    assert stack.get(f"evil.{DOMAIN}").status_code == 503
    assert requests.get(f"{stack.stats}/_haproxy_health_check", timeout=2).ok


def test_dry_run_prints_the_configuration_for_the_current_catalog(stack: Stack) -> None:
    stack.register("dry-1", "dry", "web-1", [ENABLE])
    wait_until(lambda: stack.backend_of(f"dry.{DOMAIN}"), what="dry routed")
    result = stack.container("haproxy").exec_run(["consul-lb", "haproxy", "--dry-run"])
    out = result.output.decode()
    assert result.exit_code == 0, out
    assert f"backend dry.{DOMAIN}" in out
    assert f"server dry-1 {stack.ip('web-1')}:8000 check" in out
    # Exactly what runs: the same pipeline (limits fitted to the same servers, the same
    # checks), so the configuration part is the running one byte for byte.
    stdout = (
        stack.container("haproxy")
        .exec_run(["consul-lb", "haproxy", "--dry-run"], stderr=False)
        .output.decode()
    )
    config = stdout.split("\n# ---- ", 1)[0]
    running = requests.get(f"{stack.stats}/_haproxy_getconfig", timeout=5).text
    assert config == running


def test_base_image_renders_a_template_from_the_catalog_and_kv(stack: Stack) -> None:
    """The consul-template image on its own: the shipped example (not HAProxy)."""
    stack.register("tmpl-1", "tmpl", "web-2", ["web"])
    requests.put(f"{stack.consul}/v1/kv/example/banner", data="hello from KV", timeout=5)
    examples = Path(__file__).resolve().parents[2] / "examples" / "template-mode"
    out = stack.docker.containers.run(
        image_names().ref("consul-template"),
        ["template", "--once", "--dry", "--template", "/srv/hosts.j2:/tmp/hosts"],
        environment={"CONSUL_HTTP_ADDR": "consul:8500"},
        network=f"{stack.project}_default",
        volumes={str(examples): {"bind": "/srv", "mode": "ro"}},
        remove=True,
    ).decode()
    assert "# hello from KV" in out
    assert f"{stack.ip('web-2')}\ttmpl-1.tmpl.service.internal\ttmpl.service.internal" in out

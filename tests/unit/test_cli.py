"""The command line as an operator meets it: configuration errors stop the start with
exit code 2 and name the variable; Consul unreachable is one line, not a traceback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from consul_lb import cli

from tests.unit.fake_consul import Entry, FakeConsul
from tests.unit.local_haproxy import free_port


def closed_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    values = {
        "HAPROXY_DOM": "example.com",
        "CONSUL_HTTP_ADDR": f"127.0.0.1:{closed_port()}",
        "CONSUL_LB_STATE_DIR": str(tmp_path / "state"),
        "HAPROXY_HTTP_PORT": str(free_port()),
        "HAPROXY_STATS_PORT": str(free_port()),
        "HAPROXY_RUNTIME_PORT": str(free_port()),
    }
    for name in list(os.environ):
        if name.startswith(("HAPROXY_", "CONSUL_")):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HAPROXY_RUNTIME_PORT", "http"),
        ("CONSUL_LB_TEMPLATES", "/nonexistent-templates"),
        ("CONSUL_LB_LOG_LEVEL", "verbose"),
        ("CONSUL_LB_LOG_FORMAT", "xml"),
        ("CONSUL_CACERT", "/nonexistent/ca.pem"),
        ("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token"),
        ("HAPROXY_TIMEOUT_TUNNEL", "forever"),
    ],
)
def test_a_bad_variable_stops_the_start_naming_it(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["haproxy"]) == 2
    err = capsys.readouterr().err
    assert f"  {variable}: " in err
    assert "Traceback" not in err


def test_template_mode_reads_its_own_variables_only(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HAPROXY_TIMEOUT_TUNNEL", "forever")  # not template mode's
    monkeypatch.setenv("CONSUL_LB_LOG_LEVEL", "loud")  # template mode's too
    assert cli.main(["template", "--template", "a:b", "--once"]) == 2
    err = capsys.readouterr().err
    assert "CONSUL_LB_LOG_LEVEL" in err and "HAPROXY_TIMEOUT_TUNNEL" not in err


def test_a_runtime_port_held_by_another_program_stops_the_start(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # HAProxy would forward /metrics and the state endpoint to that program.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["HAPROXY_RUNTIME_PORT"])))
        taken.listen()
        assert cli.main(["haproxy"]) == 2
    err = capsys.readouterr().err
    assert f"HAPROXY_RUNTIME_PORT: cannot listen on 127.0.0.1:{env['HAPROXY_RUNTIME_PORT']}" in err
    assert not Path(env["CONSUL_LB_STATE_DIR"], "live", "haproxy.cfg").exists()


def test_the_dry_run_without_consul_says_so_in_one_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["haproxy", "--dry-run"]) == 1
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if " INFO " not in ln]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("consul-lb: cannot read Consul at http://127.0.0.1:")
    assert "CONSUL_HTTP_ADDR" in lines[0]
    assert captured.out == ""


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    fake = FakeConsul()
    yield fake
    fake.close()


def test_the_dry_run_prints_what_would_run(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    consul: FakeConsul,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul.address)
    monkeypatch.setenv("HAPROXY_STATS_USER", "admin")
    monkeypatch.setenv("HAPROXY_STATS_PASSWORD", "a-secret-password")
    consul.register(Entry("web", "web-1", "10.0.0.1", 8000, ["HAPROXY.ENABLE=true"]))
    assert cli.main(["haproxy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "backend web.example.com" in out
    assert "server web-1 10.0.0.1:8000 check" in out
    assert "# ---- hosts.map ----" in out
    assert "a-secret-password" not in out and "<redacted>" in out

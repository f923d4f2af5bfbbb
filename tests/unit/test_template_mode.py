"""Template mode: the template functions over a Catalog and a KV dict, dependency
discovery, atomic writes, commands, argument parsing, --once and the watching loop
against a small in-process server speaking Consul's HTTP API, and supervision of a real
child process."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from consul_lb import cli
from consul_lb.child import Process
from consul_lb.consul.catalog import CRITICAL, PASSING, Catalog, Instance
from consul_lb.consul.client import ConsulClient
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.kv import KVValue, decode
from consul_lb.durations import parse_duration
from consul_lb.manager.loop import STOP, Event
from consul_lb.template.args import (
    ExecOptions,
    TemplateSpec,
    add_parser,
    parse_signal,
    parse_template_spec,
)
from consul_lb.template.functions import TemplateData
from consul_lb.template.renderer import (
    Outcome,
    Renderer,
    render_template,
    run_command,
    write_atomic,
)
from consul_lb.template.runner import (
    CHILD_EXITED,
    FORWARD,
    Watching,
    exec_options,
    run,
    run_once,
)

WEB_A = Instance("node-a", "web-1", "10.0.0.1", 8080, ("blue",))
WEB_B = Instance("node-b", "web-2", "10.0.0.2", 8081, ("green",))
WEB_DOWN = Instance("node-d", "web-3", "10.0.0.3", 8082, ("blue",), status=CRITICAL)
DB = Instance("node-c", "db-1", "10.0.0.9", 5432)
CATALOG = Catalog.build(
    {"web": ["blue", "green"], "db": ["primary"], "idle": []},
    {"web": [WEB_B, WEB_DOWN, WEB_A], "db": [DB]},
)

UPSTREAMS = """\
# {{ key_or_default("site/banner", "no banner") }}
{% for s in services() if service(s.name) %}
upstream {{ s.name }} {
{% for i in service(s.name) %}
  server {{ i.address }}:{{ i.port }};  # {{ i.node }}
{% endfor %}
}
{% endfor %}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec(tmp_path: Path, text: str, command: str | None = None) -> TemplateSpec:
    return TemplateSpec(write(tmp_path, "t.j2", text), tmp_path / "out" / "t.conf", command)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- a small Consul: the endpoints template mode reads ----------------------------------


class FakeConsul:
    """Consul's HTTP API for the endpoints template mode uses, from in-memory state:
    ``/v1/catalog/services``, ``/v1/internal/ui/services``, ``/v1/health/state/any``,
    ``/v1/health/service/<name>`` and ``/v1/kv/<key>``. Every answer carries
    ``X-Consul-Index``; a query with ``?index=`` at the current index blocks until
    something changes (or ``wait``), as Consul's blocking queries do."""

    def __init__(self, instances: dict[str, list[Instance]]) -> None:
        self.instances = instances
        self.kv: dict[str, str] = {}
        self.index = 10
        self.kv_reads: list[str] = []  # keys asked for, in order
        self.closed = False
        self.changed = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def client(self) -> ConsulClient:
        return ConsulClient(ConsulConfig(host="127.0.0.1", port=self.port))

    def put(self, key: str, value: str) -> None:
        with self.changed:
            self.kv[key] = value
            self.index += 1
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        query = parse_qs(url.query, keep_blank_values=True)
        path = unquote(url.path)
        if "index" in query:
            seen = int(query["index"][0])
            wait = parse_duration(query.get("wait", ["300s"])[0])
            with self.changed:
                self.changed.wait_for(lambda: self.index > seen or self.closed, wait)
        with self.changed:
            status, body = self.route(path, query)
            index = self.index
        data = b"" if body is None else json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.send_header("X-Consul-Index", str(index))
        request.end_headers()
        request.wfile.write(data)

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/v1/catalog/services":
            return 200, {
                n: sorted({t for i in found for t in i.tags}) for n, found in self.instances.items()
            }
        if path == "/v1/internal/ui/services":
            return 200, [self.summary(name, found) for name, found in self.instances.items()]
        if path == "/v1/health/state/any":
            if query.get("filter") != ['Status != "passing"']:
                return 400, None  # the only filter the runtime sends
            return 200, [
                self.check(name, i)
                for name, found in self.instances.items()
                for i in found
                if i.status != PASSING
            ]
        if path.startswith("/v1/health/service/"):
            name = path.removeprefix("/v1/health/service/")
            return 200, [self.entry(name, i) for i in self.instances.get(name, [])]
        if path.startswith("/v1/kv/"):
            key = path.removeprefix("/v1/kv/")
            self.kv_reads.append(key)
            if key not in self.kv:
                return 404, None
            value = base64.b64encode(self.kv[key].encode()).decode()
            return 200, [{"Key": key, "Value": value, "ModifyIndex": self.index}]
        return 404, None

    def summary(self, name: str, found: list[Instance]) -> dict[str, Any]:
        statuses = [i.status for i in found]
        return {
            "Name": name,
            "Tags": sorted({t for i in found for t in i.tags}),
            "InstanceCount": len(found),
            "Nodes": sorted({i.node for i in found}),
            "ChecksPassing": statuses.count(PASSING),
            "ChecksWarning": statuses.count("warning"),
            "ChecksCritical": statuses.count(CRITICAL),
        }

    def check(self, name: str, i: Instance) -> dict[str, Any]:
        return {
            "Node": i.node,
            "CheckID": f"service:{i.service_id}",
            "ServiceName": name,
            "Status": i.status,
        }

    def entry(self, name: str, i: Instance) -> dict[str, Any]:
        return {
            "Node": {"Node": i.node, "Address": i.address},
            "Service": {
                "ID": i.service_id,
                "Service": name,
                "Address": i.address,
                "Port": i.port,
                "Tags": list(i.tags),
            },
            "Checks": [self.check(name, i)],
        }


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    fake = FakeConsul({"web": [WEB_A, WEB_B, WEB_DOWN], "db": [DB]})
    yield fake
    fake.close()


@pytest.fixture
def offline() -> ConsulClient:
    """A client of a Consul that is not there: for what must not need Consul."""
    return ConsulClient(ConsulConfig(host="127.0.0.1", port=closed_port()))


# --- arguments -------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="consul-lb")
    add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["template", *argv])


def test_template_spec_splits_on_the_first_two_colons() -> None:
    assert parse_template_spec("in.j2:/etc/out") == TemplateSpec(
        Path("in.j2"), Path("/etc/out"), None
    )
    parsed = parse_template_spec("in.j2:/etc/out:curl -s http://localhost:8080/reload")
    assert parsed.command == "curl -s http://localhost:8080/reload"


@pytest.mark.parametrize("raw", ["in.j2", ":out", "in.j2:", "in.j2: :cmd"])
def test_template_spec_needs_source_and_dest(raw: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="SRC:DEST"):
        parse_template_spec(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("SIGHUP", signal.SIGHUP), ("hup", signal.SIGHUP), ("10", signal.SIGUSR1), ("none", None)],
)
def test_signals_by_name_or_number(raw: str, expected: signal.Signals | None) -> None:
    assert parse_signal(raw) == expected


def test_unknown_signal_is_an_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="SIGNOPE"):
        parse_signal("SIGNOPE")


def test_defaults_follow_consul_template() -> None:
    args = parse(["--template", "a:b", "--template", "c:d:reload"])
    assert [t.dest for t in args.templates] == [Path("b"), Path("d")]
    assert args.wait == (0.1, 1.0)
    assert (args.exec_command, args.exec_reload_signal) == (None, None)
    assert (args.exec_kill_signal, args.exec_kill_timeout, args.exec_splay) == (
        signal.SIGTERM,
        30.0,
        0.0,
    )


def test_exec_flags_parse() -> None:
    args = parse(
        [
            "--template=a:b",
            "--wait=2s",
            "--exec=nginx -g 'daemon off;'",
            "--exec-reload-signal=SIGHUP",
            "--exec-kill-signal=SIGQUIT",
            "--exec-kill-timeout=5s",
            "--exec-splay=250ms",
        ]
    )
    assert args.wait == (2.0, 8.0)
    options = exec_options(args)
    assert options == ExecOptions(
        ["nginx", "-g", "daemon off;"], signal.SIGHUP, signal.SIGQUIT, 5.0, 0.25
    )


def test_a_template_is_required_and_bad_values_are_rejected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (
        [],
        ["--template=a:b", "--wait=5s:1s"],
        ["--template=a:b", "--exec-splay=x"],
        ["--template=a:b", "--exec= "],
        ["--template=a:b", "--exec=sh -c 'unbalanced"],
    ):
        with pytest.raises(SystemExit):
            parse(argv)
    assert "wait max must not be below min" in capsys.readouterr().err


@pytest.mark.parametrize("extra", ["--once", "--dry"])
def test_exec_contradicts_once_and_dry(
    extra: str, offline: ConsulClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(["--template=a:b", "--exec=sleep 1", extra]), offline) == 2
    assert "consul-lb template:" in capsys.readouterr().err


# --- the template functions and dependency discovery ------------------------------------


def test_services_and_passing_instances() -> None:
    data = TemplateData(CATALOG, {})
    assert [s.name for s in data.services()] == ["db", "idle", "web"]
    assert data.service("web") == [WEB_A, WEB_B]  # sorted, whatever the input order
    assert data.service("web", tag="green") == [WEB_B]
    assert data.service("web", tag="blue") == [WEB_A]  # WEB_DOWN is blue, but critical
    assert data.service("idle") == [] and data.service("unknown") == []
    assert data.keys == set()


def test_services_list_only_passing_instances() -> None:
    web = next(s for s in TemplateData(CATALOG, {}).services() if s.name == "web")
    assert web.instances == (WEB_A, WEB_B) and web.tags == ("blue", "green")


def test_keys_are_recorded_as_dependencies() -> None:
    data = TemplateData(Catalog(), {"a": "1", "gone": None})
    assert data.key("/a") == "1"  # a leading slash is the same key
    assert data.key_or_default("gone", "dflt") == "dflt"
    assert data.key_or_default("new", "dflt") == "dflt"
    assert data.key("gone") == ""
    assert data.keys == {"a", "gone", "new"}
    assert data.missing == {"new"}  # never read: watch it
    assert data.absent == {"gone"}  # read, does not exist, and key() waits for it


def test_an_empty_key_is_an_error_unless_built_from_a_placeholder(tmp_path: Path) -> None:
    assert "empty KV key path" in (
        render_template(spec(tmp_path, "{{ key('/') }}"), CATALOG, {}).error or ""
    )
    # key() of a key not read yet gives "": no error, and no key "" to wait for.
    r = render_template(spec(tmp_path, "{{ key(key('pointer')) }}"), CATALOG, {})
    assert (r.error, r.missing, r.absent) == (None, frozenset({"pointer"}), frozenset())


def test_env_function_reads_the_given_environment() -> None:
    data = TemplateData(Catalog(), {}, env={"REGION": "eu"})
    assert data.env_var("REGION") == "eu" and data.env_var("NOPE", "x") == "x"


def test_render_is_deterministic_and_complete(tmp_path: Path) -> None:
    s = spec(tmp_path, UPSTREAMS)
    first = render_template(s, CATALOG, {"site/banner": "hello"})
    again = render_template(s, CATALOG, {"site/banner": "hello"})
    assert first.ready and first.text == again.text
    assert first.text == (
        "# hello\n"
        "upstream db {\n  server 10.0.0.9:5432;  # node-c\n}\n"
        "upstream web {\n  server 10.0.0.1:8080;  # node-a\n"
        "  server 10.0.0.2:8081;  # node-b\n}\n"
    )
    assert first.keys == {"site/banner"}


def test_unread_keys_hold_the_render_and_are_all_discovered_at_once(tmp_path: Path) -> None:
    # The arithmetic would fail on the placeholder; that is not reported as an error.
    s = spec(tmp_path, '{{ key("a") }} {{ key("b") | int + 1 }} {{ key_or_default("c", "") }}')
    r = render_template(s, Catalog(), {})
    assert (r.ready, r.error) == (False, None)
    assert r.missing == {"a", "b", "c"}
    r = render_template(s, Catalog(), {"a": "x", "b": "41", "c": None})
    assert r.text == "x 42 "


def test_conditional_keys_are_discovered_in_rounds(tmp_path: Path) -> None:
    s = spec(tmp_path, '{{ key(key("pointer")) }}')
    assert render_template(s, Catalog(), {}).missing == {"pointer"}
    r = render_template(s, Catalog(), {"pointer": "target"})
    assert r.missing == {"target"} and r.keys == {"pointer", "target"}


def test_undefined_name_names_template_and_line(tmp_path: Path) -> None:
    s = spec(tmp_path, "line one\n{{ servce('web') }}\n")
    r = render_template(s, CATALOG, {})
    assert not r.ready
    assert r.error is not None
    assert f"{s.source}:2: UndefinedError" in r.error and "servce" in r.error


def test_syntax_error_names_template_and_line(tmp_path: Path) -> None:
    s = spec(tmp_path, "ok\nok\n{% for x in %}\n")
    r = render_template(s, CATALOG, {})
    assert r.error is not None and r.error.startswith(f"{s.source}:3: syntax error")


def test_missing_template_file_is_an_error(tmp_path: Path) -> None:
    s = TemplateSpec(tmp_path / "nope.j2", tmp_path / "out")
    assert "template not found" in (render_template(s, CATALOG, {}).error or "")


def test_kv_values_decode() -> None:
    assert decode(None) == KVValue(None)
    assert decode([{"Value": None}]) == KVValue("")
    assert decode([{"Value": base64.b64encode("café".encode()).decode()}]) == KVValue("café")


# --- writing ---------------------------------------------------------------------------


def test_write_atomic_skips_identical_content(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file"
    assert write_atomic(path, "one\n")
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    inode = path.stat().st_ino
    assert not write_atomic(path, "one\n")
    assert path.stat().st_ino == inode
    assert write_atomic(path, "two\n", backup=True)
    assert path.read_text() == "two\n" and path.stat().st_ino != inode  # renamed into place
    assert path.stat().st_mode & 0o777 == 0o600  # mode kept
    assert (tmp_path / "deep" / "file.bak").read_text() == "one\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file", "file.bak"]


def test_renderer_writes_changes_and_runs_each_command_once(tmp_path: Path) -> None:
    log_file = tmp_path / "commands"
    command = f"echo ran >> {log_file}"
    a = TemplateSpec(write(tmp_path, "a.j2", "{{ key('a') }}"), tmp_path / "a", command)
    b = TemplateSpec(write(tmp_path, "b.j2", "{{ key('b') }}"), tmp_path / "b", command)
    renderer = Renderer([a, b])

    def step(kv: dict[str, str | None]) -> Outcome:
        outcome = renderer.render(Catalog(), kv)
        assert renderer.store(outcome) == []
        return outcome

    first = step({"a": "1", "b": "1"})
    assert first.changed == [a, b] and first.commands() == [command]
    assert all(run_command(c, 5) for c in first.commands())
    assert log_file.read_text() == "ran\n"
    assert step({"a": "1", "b": "1"}).changed == []  # unchanged: no write, no command
    assert step({"a": "2", "b": "1"}).changed == [a]


def test_failed_render_keeps_the_previous_file(tmp_path: Path) -> None:
    s = spec(tmp_path, "{{ key('n') | int // 1 }}")
    renderer = Renderer([s])
    renderer.store(renderer.render(Catalog(), {"n": "1"}))
    s.source.write_text("{{ 1 // key('n') | int }}")
    os.utime(s.source, (time.time() + 5, time.time() + 5))  # Jinja reloads on mtime
    outcome = renderer.render(Catalog(), {"n": "0"})
    assert renderer.store(outcome) == []
    assert outcome.failed and "ZeroDivisionError" in (outcome.failed[0].error or "")
    assert renderer.never_rendered(outcome) == []  # it rendered before: not fatal
    assert s.dest.read_text() == "1"


def test_dry_prints_instead_of_writing(tmp_path: Path) -> None:
    s = spec(tmp_path, "hello {{ services() | length }}\n")
    renderer = Renderer([s], dry=True)
    renderer.out = io.StringIO()
    renderer.store(renderer.render(CATALOG, {}))
    renderer.store(renderer.render(CATALOG, {}))
    assert renderer.out.getvalue() == f"> {s.dest}\nhello 3\n"
    assert not s.dest.exists()


def alive(pid: int) -> bool:
    """Running (a zombie is not: nobody may be left to reap it in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_command_failure_and_timeout(tmp_path: Path) -> None:
    assert not run_command("exit 3", 5)
    assert run_command("exit 0", 5)
    pid_file = tmp_path / "pid"
    # The shell starts a process of its own; a timeout kills the whole group.
    assert not run_command(f"sleep 30 & echo $! > {pid_file}; wait", 1)
    pid = int(pid_file.read_text())
    wait_for(lambda: not alive(pid))


def test_once_reads_the_catalog_and_keys_in_rounds(
    tmp_path: Path, consul: FakeConsul, capsys: pytest.CaptureFixture[str]
) -> None:
    consul.kv.update({"pointer": "target", "target": "found"})
    s = spec(tmp_path, '{{ key(key("pointer")) }} {{ service("web") | length }}\n')
    assert run_once(Renderer([s]), consul.client(), 5) == 0
    assert s.dest.read_text() == "found 2\n"  # the critical instance of web is left out
    assert consul.kv_reads == ["pointer", "target"]  # each key read once, in its round
    s.source.write_text('{{ key("absent") }}')
    assert run_once(Renderer([s]), consul.client(), 5) == 1
    assert "KV key(s) missing: absent" in capsys.readouterr().err
    assert s.dest.read_text() == "found 2\n"


def test_a_destination_that_cannot_be_written_is_an_error(
    tmp_path: Path, consul: FakeConsul
) -> None:
    # Under a regular file: cannot be written, whoever runs the test (root included).
    (tmp_path / "afile").write_text("")
    source = write(tmp_path, "t.j2", "{{ service('web') | length }}\n")
    out = tmp_path / "child.log"
    args = parse(["--template", f"{source}:{tmp_path / 'afile' / 'out.txt'}"])
    assert run_once(Renderer(args.templates), consul.client(), 5) == 1

    options = ExecOptions(child_argv(out))
    watching = Watching(Renderer(args.templates), consul.client(), args, options)
    assert watching.step(CATALOG) == 1
    assert watching.child is None and not out.exists()  # not started on a missing file


def test_a_write_failure_after_a_good_write_is_not_fatal(
    tmp_path: Path, offline: ConsulClient
) -> None:
    folder = tmp_path / "d"
    source = write(tmp_path, "t.j2", "{{ service('web') | length }}\n")
    args = parse(["--template", f"{source}:{folder / 'out'}"])
    watching = Watching(Renderer(args.templates), offline, args, None)
    assert watching.step(CATALOG) == 0
    assert (folder / "out").read_text() == "2\n"
    shutil.rmtree(folder)
    folder.write_text("")  # the directory is gone for a while
    assert watching.step(Catalog()) == 0
    folder.unlink()
    folder.mkdir()
    assert watching.step(Catalog()) == 0  # written again on the next change
    assert (folder / "out").read_text() == "0\n"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """cli.main sets up the root logger for the process; put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_once_without_consul_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    for var in ("CONSUL_HTTP_SSL", "CONSUL_LB_LOG_FORMAT", "CONSUL_LB_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{port}")
    source = write(tmp_path, "t.j2", "{{ services() | length }}\n")
    code = cli.main(["template", "--template", f"{source}:{tmp_path / 'out'}", "--once"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    # Besides the runtime's INFO log lines, exactly one line: what failed and what to check.
    lines = [line for line in err.splitlines() if " INFO " not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"consul-lb template: cannot read Consul at http://127.0.0.1:{port}")
    assert "CONSUL_HTTP_ADDR" in lines[0]
    assert not (tmp_path / "out").exists()


# --- the supervised child --------------------------------------------------------------

CHILD = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def note(text):
    with out.open("a") as fh:
        fh.write(text + "\\n")
signal.signal(signal.SIGHUP, lambda *_: note("hup"))
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7))
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, lambda *_: note("term"))
note("ready")
while True:
    time.sleep(0.02)
"""


def child_argv(out: Path, mode: str = "plain") -> list[str]:
    return [sys.executable, "-c", CHILD, str(out), mode]


def ready_count(out: Path) -> int:
    return out.read_text().count("ready") if out.exists() else 0


def drive(watching: Watching, until: Callable[[], bool], timeout: float = 5.0) -> None:
    """The watching loop's body (without Consul watchers): handle events until ``until``."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        event = watching.loop.next(idle=0.02)
        if event is not None:
            watching.handle(event)


@pytest.fixture
def supervising(tmp_path: Path, offline: ConsulClient) -> Iterator[Callable[..., Watching]]:
    """A Watching whose only template reads the catalog (no KV, so no Consul needed),
    its child started by the first step; the child is stopped after the test."""
    made: list[Watching] = []

    def start(**options: Any) -> Watching:
        source = write(tmp_path, "t.j2", "{{ service('web') | length }}\n")
        args = parse(["--template", f"{source}:{tmp_path / 'f'}"])
        watching = Watching(
            Renderer(args.templates),
            offline,
            args,
            ExecOptions(child_argv(tmp_path / "child.log"), **options),
        )
        made.append(watching)
        assert watching.step(CATALOG) == 0
        wait_for(lambda: ready_count(tmp_path / "child.log") == 1)
        return watching

    yield start
    for watching in made:
        if watching.child is not None:
            watching.child.stop(timeout=5)


def test_reload_signal_reaches_the_child(
    tmp_path: Path, supervising: Callable[..., Watching]
) -> None:
    out = tmp_path / "child.log"
    watching = supervising(reload_signal=signal.SIGHUP, splay=0.05)
    assert watching.child is not None
    child = watching.child
    assert watching.step(CATALOG) == 0
    assert not watching.loop.pending("reload-child")  # nothing changed: no reload
    assert watching.step(Catalog()) == 0  # the file changed: reload, after the splay
    assert watching.loop.pending("reload-child")
    drive(watching, lambda: "hup" in out.read_text())
    assert watching.child is child and child.running() and ready_count(out) == 1
    assert child.stop() == 128 + signal.SIGTERM


def test_without_reload_signal_the_child_is_restarted(
    tmp_path: Path, supervising: Callable[..., Watching]
) -> None:
    out = tmp_path / "child.log"
    watching = supervising()
    old = watching.child
    assert old is not None
    assert watching.step(Catalog()) == 0
    drive(watching, lambda: watching.child is not old)
    new = watching.child
    assert new is not None and new.pid != old.pid
    assert old.popen.returncode == -signal.SIGTERM  # stopped with the kill signal, reaped
    wait_for(lambda: ready_count(out) == 2)
    # The old child's exit, reported by its waiter, is ours: not the end of the runtime.
    event = watching.loop.next(idle=5)
    assert event == Event(CHILD_EXITED, (old, 128 + signal.SIGTERM))
    watching.handle(event)
    assert watching.code is None and watching.child is new and new.running()


def test_kill_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "child.log"
    exits: list[int] = []
    child = Process(child_argv(out, "stubborn"), lambda p, code: exits.append(code))
    wait_for(lambda: ready_count(out) == 1)
    assert child.stop(signal.SIGTERM, timeout=1) == 128 + signal.SIGKILL
    assert "term" in out.read_text()  # the kill signal came first, and was ignored
    wait_for(lambda: exits == [128 + signal.SIGKILL])  # its exit reported once


def test_child_exit_is_reported_with_its_code(supervising: Callable[..., Watching]) -> None:
    watching = supervising()
    child = watching.child
    assert child is not None
    # SIGUSR1 to the runtime is passed on; the test child exits 7 on SIGUSR1.
    watching.handle(Event(FORWARD, int(signal.SIGUSR1)))
    drive(watching, lambda: watching.code is not None)
    assert watching.code == 7 and watching.child is None
    assert not child.running() and child.code == 7


# --- the watching loop, against the small Consul -----------------------------------------


def test_watching_waits_for_keys_then_starts_and_reloads_the_child(
    tmp_path: Path, consul: FakeConsul
) -> None:
    out = tmp_path / "child.log"
    dest = tmp_path / "f"
    source = write(tmp_path, "t.j2", '{{ key("v") }}')
    args = parse(["--template", f"{source}:{dest}", "--exec", "x", "--exec-reload-signal", "HUP"])
    options = ExecOptions(child_argv(out), signal.SIGHUP)
    watching = Watching(Renderer(args.templates), consul.client(), args, options)
    try:
        assert watching.step(CATALOG) == 0
        # The template asked for "v": it is read (it does not exist) and watched.
        wait_for(lambda: watching.kv.snapshot() == {"v": None})
        assert set(consul.kv_reads) == {"v"}
        assert watching.step(CATALOG) == 0
        assert not dest.exists() and watching.child is None and not out.exists()
        consul.put("v", "1")
        wait_for(lambda: watching.kv.snapshot() == {"v": "1"})
        assert watching.step(CATALOG) == 0
        assert dest.read_text() == "1"
        wait_for(lambda: ready_count(out) == 1)
        child = watching.child
        assert watching.step(CATALOG) == 0
        assert not watching.loop.pending("reload-child")  # nothing changed: no reload
        consul.put("v", "2")
        wait_for(lambda: watching.kv.snapshot() == {"v": "2"})
        assert watching.step(CATALOG) == 0
        assert dest.read_text() == "2"
        drive(watching, lambda: out.read_text().count("hup") == 1)
        assert watching.child is child and ready_count(out) == 1  # signalled, not restarted
    finally:
        watching.kv.stop()
        if watching.child is not None:
            watching.child.stop(timeout=5)


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """Watching.run installs the runtime's signal handlers; put pytest's back."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
    saved = {s: signal.getsignal(s) for s in signals}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.usefixtures("restore_signals")
def test_watching_runs_renders_each_change_and_stops_its_child(
    tmp_path: Path, consul: FakeConsul
) -> None:
    out = tmp_path / "child.log"
    dest = tmp_path / "f"
    source = write(
        tmp_path, "t.j2", '{{ key_or_default("v", "none") }} {{ service("web") | length }}'
    )
    args = parse(["--template", f"{source}:{dest}", "--wait", "10ms:50ms"])
    options = ExecOptions(child_argv(out), signal.SIGHUP, kill_timeout=5)
    watching = Watching(Renderer(args.templates), consul.client(), args, options)
    seen: list[Process | None] = []
    problems: list[BaseException] = []

    def operator() -> None:
        try:
            wait_for(lambda: dest.exists() and dest.read_text() == "none 2")
            wait_for(lambda: ready_count(out) == 1)
            seen.append(watching.child)
            consul.put("v", "1")
            wait_for(lambda: dest.read_text() == "1 2")
            wait_for(lambda: "hup" in out.read_text())
        except BaseException as exc:
            problems.append(exc)
        finally:
            watching.loop.post(Event(STOP))  # what SIGTERM's handler posts

    thread = threading.Thread(target=operator)
    thread.start()
    code = watching.run()
    thread.join()
    assert not problems, problems
    assert code == 0
    child = seen[0]
    assert child is not None and child.code == 128 + signal.SIGTERM  # stopped on the way out
    assert ready_count(out) == 1 and out.read_text().count("hup") == 1


def test_watching_stops_when_a_template_never_renders(
    tmp_path: Path, offline: ConsulClient
) -> None:
    source = write(tmp_path, "t.j2", "{{ nope }}")
    args = parse(["--template", f"{source}:{tmp_path / 'f'}"])
    watching = Watching(Renderer(args.templates), offline, args, None)
    assert watching.step(CATALOG) == 1


def test_no_zombies_left() -> None:
    # Every child above was waited for; a zombie of ours would be reaped (and seen) here.
    with contextlib.suppress(ChildProcessError):  # raised when there are no children at all
        assert os.waitpid(-1, os.WNOHANG) == (0, 0)

"""Template mode without Consul: the template functions over a Catalog and a KV dict,
dependency discovery, atomic writes, commands, argument parsing, and supervision of a
real child process."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from consul_lb import template as tm
from consul_lb.consul.catalog import Catalog, Instance
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.kv import KVValue, decode

WEB_A = Instance("node-a", "web-1", "10.0.0.1", 8080, ("blue",))
WEB_B = Instance("node-b", "web-2", "10.0.0.2", 8081, ("green",))
CATALOG = Catalog.build(
    {"web": ["blue", "green"], "db": ["primary"], "idle": []},
    {"web": [WEB_B, WEB_A], "db": [Instance("node-c", "db-1", "10.0.0.9", 5432)]},
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


def spec(tmp_path: Path, text: str, command: str | None = None) -> tm.TemplateSpec:
    return tm.TemplateSpec(write(tmp_path, "t.j2", text), tmp_path / "out" / "t.conf", command)


def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- arguments -------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="consul-lb")
    tm.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["template", *argv])


def test_template_spec_splits_on_the_first_two_colons() -> None:
    assert tm.parse_template_spec("in.j2:/etc/out") == tm.TemplateSpec(
        Path("in.j2"), Path("/etc/out"), None
    )
    parsed = tm.parse_template_spec("in.j2:/etc/out:curl -s http://localhost:8080/reload")
    assert parsed.command == "curl -s http://localhost:8080/reload"


@pytest.mark.parametrize("raw", ["in.j2", ":out", "in.j2:", "in.j2: :cmd"])
def test_template_spec_needs_source_and_dest(raw: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="SRC:DEST"):
        tm.parse_template_spec(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("SIGHUP", signal.SIGHUP), ("hup", signal.SIGHUP), ("10", signal.SIGUSR1), ("none", None)],
)
def test_signals_by_name_or_number(raw: str, expected: signal.Signals | None) -> None:
    assert tm.parse_signal(raw) == expected


def test_unknown_signal_is_an_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="SIGNOPE"):
        tm.parse_signal("SIGNOPE")


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
    options = tm.exec_options(args)
    assert options == tm.ExecOptions(
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
def test_exec_contradicts_once_and_dry(extra: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert tm.run(parse(["--template=a:b", "--exec=sleep 1", extra]), ConsulConfig()) == 2
    assert "consul-lb template:" in capsys.readouterr().err


# --- the template functions and dependency discovery ------------------------------------


def test_services_and_passing_instances() -> None:
    data = tm.TemplateData(CATALOG, {})
    assert [s.name for s in data.services()] == ["db", "idle", "web"]
    assert data.service("web") == [WEB_A, WEB_B]  # sorted, whatever the input order
    assert data.service("web", tag="green") == [WEB_B]
    assert data.service("idle") == [] and data.service("unknown") == []
    assert data.keys == set()


def test_keys_are_recorded_as_dependencies() -> None:
    data = tm.TemplateData(Catalog(), {"a": "1", "gone": None})
    assert data.key("/a") == "1"  # a leading slash is the same key
    assert data.key_or_default("gone", "dflt") == "dflt"
    assert data.key_or_default("new", "dflt") == "dflt"
    assert data.key("gone") == ""
    assert data.keys == {"a", "gone", "new"}
    assert data.missing == {"new"}  # never read: watch it
    assert data.absent == {"gone"}  # read, does not exist, and key() waits for it


def test_an_empty_key_is_an_error_unless_built_from_a_placeholder(tmp_path: Path) -> None:
    assert "empty KV key path" in (
        tm.render_template(spec(tmp_path, "{{ key('/') }}"), CATALOG, {}).error or ""
    )


def test_env_function_reads_the_given_environment() -> None:
    data = tm.TemplateData(Catalog(), {}, env={"REGION": "eu"})
    assert data.env_var("REGION") == "eu" and data.env_var("NOPE", "x") == "x"


def test_render_is_deterministic_and_complete(tmp_path: Path) -> None:
    s = spec(tmp_path, UPSTREAMS)
    first = tm.render_template(s, CATALOG, {"site/banner": "hello"})
    again = tm.render_template(s, CATALOG, {"site/banner": "hello"})
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
    r = tm.render_template(s, Catalog(), {})
    assert (r.ready, r.error) == (False, None)
    assert r.missing == {"a", "b", "c"}
    r = tm.render_template(s, Catalog(), {"a": "x", "b": "41", "c": None})
    assert r.text == "x 42 "


def test_conditional_keys_are_discovered_in_rounds(tmp_path: Path) -> None:
    s = spec(tmp_path, '{{ key(key("pointer")) }}')
    assert tm.render_template(s, Catalog(), {}).missing == {"pointer"}
    r = tm.render_template(s, Catalog(), {"pointer": "target"})
    assert r.missing == {"target"} and r.keys == {"pointer", "target"}


def test_undefined_name_names_template_and_line(tmp_path: Path) -> None:
    s = spec(tmp_path, "line one\n{{ servce('web') }}\n")
    r = tm.render_template(s, CATALOG, {})
    assert not r.ready
    assert r.error is not None
    assert f"{s.source}:2: UndefinedError" in r.error and "servce" in r.error


def test_syntax_error_names_template_and_line(tmp_path: Path) -> None:
    s = spec(tmp_path, "ok\nok\n{% for x in %}\n")
    r = tm.render_template(s, CATALOG, {})
    assert r.error is not None and r.error.startswith(f"{s.source}:3: syntax error")


def test_missing_template_file_is_an_error(tmp_path: Path) -> None:
    s = tm.TemplateSpec(tmp_path / "nope.j2", tmp_path / "out")
    assert "template not found" in (tm.render_template(s, CATALOG, {}).error or "")


def test_kv_values_decode() -> None:
    assert decode(None) == KVValue(None)
    assert decode({"Value": None}) == KVValue("")
    assert decode({"Value": b"caf\xc3\xa9"}) == KVValue("café")


# --- writing ---------------------------------------------------------------------------


def test_write_atomic_skips_identical_content(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file"
    assert tm.write_atomic(path, "one\n")
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    inode = path.stat().st_ino
    assert not tm.write_atomic(path, "one\n")
    assert path.stat().st_ino == inode
    assert tm.write_atomic(path, "two\n", backup=True)
    assert path.read_text() == "two\n" and path.stat().st_ino != inode  # renamed into place
    assert path.stat().st_mode & 0o777 == 0o600  # mode kept
    assert (tmp_path / "deep" / "file.bak").read_text() == "one\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file", "file.bak"]


def test_renderer_writes_changes_and_runs_each_command_once(tmp_path: Path) -> None:
    log_file = tmp_path / "commands"
    command = f"echo ran >> {log_file}"
    a = tm.TemplateSpec(write(tmp_path, "a.j2", "{{ key('a') }}"), tmp_path / "a", command)
    b = tm.TemplateSpec(write(tmp_path, "b.j2", "{{ key('b') }}"), tmp_path / "b", command)
    renderer = tm.Renderer([a, b])

    def step(kv: dict[str, str | None]) -> tm.Outcome:
        outcome = renderer.render(Catalog(), kv)
        renderer.store(outcome)
        return outcome

    first = step({"a": "1", "b": "1"})
    assert first.changed == [a, b] and first.commands() == [command]
    assert all(tm.run_command(c, 5) for c in first.commands())
    assert log_file.read_text() == "ran\n"
    assert step({"a": "1", "b": "1"}).changed == []  # unchanged: no write, no command
    assert step({"a": "2", "b": "1"}).changed == [a]


def test_failed_render_keeps_the_previous_file(tmp_path: Path) -> None:
    s = spec(tmp_path, "{{ key('n') | int // 1 }}")
    renderer = tm.Renderer([s])
    renderer.store(renderer.render(Catalog(), {"n": "1"}))
    s.source.write_text("{{ 1 // key('n') | int }}")
    os.utime(s.source, (time.time() + 5, time.time() + 5))  # Jinja reloads on mtime
    outcome = renderer.render(Catalog(), {"n": "0"})
    renderer.store(outcome)
    assert outcome.failed and "ZeroDivisionError" in (outcome.failed[0].error or "")
    assert renderer.never_rendered(outcome) == []  # it rendered before: not fatal
    assert s.dest.read_text() == "1"


def test_dry_prints_instead_of_writing(tmp_path: Path) -> None:
    s = spec(tmp_path, "hello {{ services() | length }}\n")
    renderer = tm.Renderer([s], dry=True)
    renderer.out = io.StringIO()
    renderer.store(renderer.render(CATALOG, {}))
    renderer.store(renderer.render(CATALOG, {}))
    assert renderer.out.getvalue() == f"> {s.dest}\nhello 3\n"
    assert not s.dest.exists()


def test_command_failure_and_timeout(tmp_path: Path) -> None:
    assert not tm.run_command("exit 3", 5)
    started = time.monotonic()
    assert not tm.run_command("sleep 5; sleep 5", 0.2)  # the whole group is killed
    assert time.monotonic() - started < 2


def test_once_reads_keys_in_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = {"pointer": "target", "target": "found"}
    reads: list[set[str]] = []

    def read_keys(config: ConsulConfig, keys: Iterable[str]) -> dict[str, str | None]:
        reads.append(set(keys))
        return {k: store.get(k) for k in keys}

    monkeypatch.setattr(tm, "read_once", lambda config, wanted: CATALOG)
    monkeypatch.setattr(tm, "read_keys", read_keys)
    s = spec(tmp_path, '{{ key(key("pointer")) }} {{ service("web") | length }}\n')
    assert tm.run_once(tm.Renderer([s]), ConsulConfig(), 5) == 0
    assert s.dest.read_text() == "found 2\n"
    assert reads == [{"pointer"}, {"target"}]
    s.source.write_text('{{ key("absent") }}')
    os.utime(s.source, (time.time() + 5, time.time() + 5))
    assert tm.run_once(tm.Renderer([s]), ConsulConfig(), 5) == 1


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
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
note("ready")
while True:
    time.sleep(0.02)
"""


def start_child(
    tmp_path: Path, mode: str = "plain", **options: Any
) -> tuple[tm.Child, Path, list[int]]:
    out = tmp_path / "child.log"
    exits: list[int] = []
    child = tm.Child(
        tm.ExecOptions([sys.executable, "-c", CHILD, str(out), mode], **options), exits.append
    )
    child.start()
    wait_for(lambda: out.exists() and out.read_text().count("ready") == 1)
    return child, out, exits


def test_reload_signal_reaches_the_child(tmp_path: Path) -> None:
    child, out, exits = start_child(tmp_path, reload_signal=signal.SIGHUP, splay=0.05)
    assert child.proc is not None
    pid = child.proc.pid
    child.reload(threading.Event())
    wait_for(lambda: "hup" in out.read_text())
    assert child.proc.pid == pid and child.stop() == 128 + signal.SIGTERM
    assert exits == []  # stopped by us, not an exit of its own


def test_without_reload_signal_the_child_is_restarted(tmp_path: Path) -> None:
    child, out, exits = start_child(tmp_path)
    assert child.proc is not None
    old = child.proc
    child.reload(threading.Event())
    assert child.proc is not None and child.proc.pid != old.pid
    assert old.returncode == -signal.SIGTERM  # reaped: no zombie
    wait_for(lambda: out.read_text().count("ready") == 2)
    child.stop()
    assert exits == []


def test_kill_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    child, _, _ = start_child(tmp_path, "stubborn", kill_timeout=0.3)
    started = time.monotonic()
    assert child.stop() == 128 + signal.SIGKILL
    assert 0.3 <= time.monotonic() - started < 2


def test_child_exit_is_reported_with_its_code(tmp_path: Path) -> None:
    child, _, exits = start_child(tmp_path)
    child.send(signal.SIGUSR1)  # the test child exits 7 on SIGUSR1
    wait_for(lambda: exits == [7])
    assert not child.running() and child.stop() == 7


# --- the watching loop, with the Consul side faked --------------------------------------


class FakeKV:
    def __init__(self) -> None:
        self.values: dict[str, str | None] = {}
        self.wanted: set[str] = set()

    def want(self, keys: Iterable[str]) -> None:
        self.wanted = set(keys)

    def snapshot(self) -> dict[str, str | None]:
        return dict(self.values)

    def stop(self) -> None:
        pass


def test_watching_waits_for_keys_then_starts_and_reloads_the_child(tmp_path: Path) -> None:
    out = tmp_path / "child.log"
    source = write(tmp_path, "t.j2", '{{ key("v") }}')
    argv = ["--template", f"{source}:{tmp_path / 'f'}"]
    args = parse([*argv, "--exec", "x", "--exec-reload-signal", "HUP"])
    options = tm.ExecOptions([sys.executable, "-c", CHILD, str(out), "plain"], signal.SIGHUP)
    watching = tm.Watching(tm.Renderer(args.templates), ConsulConfig(), args, options)
    kv = FakeKV()
    watching.kv = kv  # type: ignore[assignment]
    try:
        assert watching.step(CATALOG) == 0
        assert kv.wanted == {"v"} and not (tmp_path / "f").exists() and not out.exists()
        kv.values["v"] = "1"
        assert watching.step(CATALOG) == 0
        assert (tmp_path / "f").read_text() == "1"
        wait_for(lambda: out.exists() and "ready" in out.read_text())
        watching.step(CATALOG)  # nothing changed: no reload
        kv.values["v"] = "2"
        watching.step(CATALOG)
        wait_for(lambda: out.read_text().count("hup") == 1)
    finally:
        assert watching.child is not None
        watching.child.stop()


def test_watching_stops_when_a_template_never_renders(tmp_path: Path) -> None:
    source = write(tmp_path, "t.j2", "{{ nope }}")
    args = parse(["--template", f"{source}:{tmp_path / 'f'}"])
    watching = tm.Watching(tm.Renderer(args.templates), ConsulConfig(), args, None)
    watching.kv = FakeKV()  # type: ignore[assignment]
    assert watching.step(CATALOG) == 1


def test_no_zombies_left(tmp_path: Path) -> None:
    # Every child above was waited for; a zombie of ours would be reaped (and seen) here.
    with contextlib.suppress(ChildProcessError):  # raised when there are no children at all
        assert os.waitpid(-1, os.WNOHANG) == (0, 0)

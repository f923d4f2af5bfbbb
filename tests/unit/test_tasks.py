"""The Invoke tasks as a user meets them: --help, short flags, deploy's options, demo --down.

Each runs the tasks through Invoke's own parser, as `invoke ...` on the command line does.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from invoke.collection import Collection
from invoke.program import Program

import tasks
from devtools import images, local_images, marathon, progress

README = Path(tasks.__file__).resolve().parent / "README.md"
MARATHON_DOC = README.parent / "docs" / "marathon.md"
COLLECTION = Collection.from_module(tasks)
# Invoke's parser uses up a task's help texts (Task.get_arguments pops them): each run gets
# copies of the tasks as they were at import.
PRISTINE = [copy.deepcopy(COLLECTION[name]) for name in COLLECTION.task_names]


def invoke(*argv: str) -> int:
    """Run ``invoke ARGV...``; its exit status (0 when it returns)."""
    fresh = Collection(*(copy.deepcopy(t) for t in PRISTINE))
    try:
        Program(namespace=fresh, binary="invoke").run(["invoke", *argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def options(name: str) -> dict[str, Any]:
    """The task's options, by their long flag, from Invoke's own parser."""
    args = copy.deepcopy(COLLECTION[name]).get_arguments(ignore_unknown_help=True)
    return {("-" if len(a.name) == 1 else "--") + a.name.replace("_", "-"): a for a in args}


@pytest.mark.parametrize("name", sorted(COLLECTION.task_names))
def test_value_options_show_that_they_take_a_value(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke("--help", name) == 0
    shown = capsys.readouterr().out
    for flag, arg in options(name).items():
        if arg.kind is not bool:
            # "--timeout=STRING  SECONDS to ...", never "--timeout" alone like a switch.
            assert re.search(rf"^\s+{flag}[= ][A-Z]+\s+\S", shown, re.M), (flag, shown)


def test_a_short_flag_means_one_option_in_every_task() -> None:
    meanings: dict[str, set[str]] = {}
    for name in COLLECTION.task_names:
        for arg in options(name).values():
            for short in (n for n in arg.names if len(n) == 1):
                meanings.setdefault(short, set()).add(arg.name)
    assert meanings == {"k": {"k"}}


@pytest.mark.parametrize("argv", [("bench", "--help"), ("bench", "-h"), ("deploy", "--help")])
def test_task_help_after_the_task_name(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke(*argv) == 0
    shown = capsys.readouterr()
    assert f"[--core-opts] {argv[0]} [--options]" in shown.out
    assert "--namespace=STRING" in shown.out
    assert shown.err == ""


def test_deploy_without_a_url_says_how_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke("deploy") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: deploy needs Marathon's base URL: invoke deploy --marathon URL")
    assert "positional" not in err


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The app definitions `invoke deploy` sends (nothing reaches a network)."""
    sent: list[dict[str, Any]] = []

    def fake_deploy(**kwargs: Any) -> str:
        sent.append(kwargs["app"])
        return "deployment-1"

    monkeypatch.setattr(marathon, "deploy", fake_deploy)
    return sent


def test_deploy_sends_zero_instances(deployed: list[dict[str, Any]]) -> None:
    assert invoke("deploy", "--marathon", "http://marathon.test:8080", "--instances", "0") == 0
    assert deployed[0]["instances"] == 0
    assert invoke("deploy", "--marathon", "http://marathon.test:8080") == 0
    assert deployed[1]["instances"] == marathon.load_app()["instances"]


@pytest.mark.parametrize(
    "given, error",
    [
        ("-1", "error: --instances: expected a whole number of 0 or more, got '-1'"),
        ("two", "error: --instances: expected a whole number of 0 or more, got 'two'"),
    ],
)
def test_deploy_refuses_a_bad_instance_count(
    given: str, error: str, deployed: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke("deploy", "--marathon", "http://m.test", "--instances", given) == 1
    assert capsys.readouterr().err.strip() == error
    assert deployed == []


@pytest.mark.parametrize(
    "domain",
    ["Bad_Domain!", "-lead.example.com", "trail-.example.com", "a..b", "x" * 64 + ".com"],
)
def test_deploy_refuses_a_domain_the_runtime_would_refuse(
    domain: str, deployed: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke("deploy", "--marathon", "http://m.test", "--domain", domain) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --domain: expected a DNS name such as example.com")
    assert deployed == []


def test_deploy_sends_the_domain_as_the_runtime_reads_it(deployed: list[dict[str, Any]]) -> None:
    assert invoke("deploy", "--marathon", "http://m.test", "--domain", "LB.Example.COM.") == 0
    assert deployed[0]["env"]["HAPROXY_DOM"] == "lb.example.com"


def test_a_hand_edited_definition_with_a_bad_domain_is_invalid() -> None:
    app = marathon.load_app()
    app["env"]["HAPROXY_DOM"] = "Bad_Domain!"
    with pytest.raises(marathon.AppDefinitionError, match=r"env\.HAPROXY_DOM: expected a DNS"):
        marathon.validate_app(app)


def test_demo_down_neither_pulls_nor_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("demo --down must not pull or build")

    for name in ("client", "build_all", "try_pull"):
        monkeypatch.setattr(images, name, forbidden)
    for name in ("ensure_debian_base", "ensure_consul_image"):
        monkeypatch.setattr(local_images, name, forbidden)
    commands: list[list[str]] = []
    monkeypatch.setattr(progress.Step, "run", lambda self, cmd, env=None: commands.append(cmd))
    assert invoke("demo", "--down") == 0
    assert len(commands) == 1
    assert commands[0][:2] == ["docker", "compose"] and "down" in commands[0]


def test_every_task_option_is_in_the_readme() -> None:
    """The README's Tasks table names every option (deploy's are in docs/marathon.md)."""
    rows = {
        match[1]: match[0]
        for match in re.finditer(r"^\| `(\w+)[^|]*\|.*$", README.read_text(), re.M)
    }
    documented = rows | {"deploy": MARATHON_DOC.read_text()}
    for name in COLLECTION.task_names:
        assert name in documented, f"invoke {name} is not in the README's Tasks table"
        for flag, arg in options(name).items():
            if not arg.positional:
                assert flag in documented[name], f"invoke {name} {flag} is not documented"

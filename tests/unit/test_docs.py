"""The README's promises, checked against the code: every variable, tag, endpoint and
metric of its tables exists with the documented default, nothing the code reads is left
out, and the log lines it quotes (```log blocks) are lines the code prints."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from consul_lb.acme.settings import VARIABLES as ACME_VARIABLES
from consul_lb.durations import parse_wait
from consul_lb.model.tags import TAGS, ServiceOptions, TagError, parse_tags
from consul_lb.observe.endpoints import Observer, Sources
from consul_lb.observe.metrics import Figures, WatchFigures, exposition
from consul_lb.settings import COMMON_VARIABLES, VARIABLES, Common, Settings
from consul_lb.tls.settings import VARIABLES as TLS_VARIABLES
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# Read by the code outside the two tables of parsers.
SPECIAL = {"HAPROXY_DOM", "HAPROXY_RENDER_WAIT", "HAPROXY_STATS_PASSWORD_FILE"}


def table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after ``heading``."""
    start = README.index(heading)
    rows = []
    for line in README[start:].splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not set(cells[0]) <= set("-: "):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def code(cell: str) -> str:
    found = re.findall(r"`([^`]+)`", cell)
    return found[0] if found else cell


ENVIRONMENT = {code(r[0]): r for r in table("### Environment")}


READ = set(VARIABLES) | set(COMMON_VARIABLES) | set(TLS_VARIABLES) | set(ACME_VARIABLES)


def test_every_variable_the_code_reads_is_in_the_readme() -> None:
    assert set(ENVIRONMENT) == READ | SPECIAL


@pytest.mark.parametrize("variable", sorted(READ))
def test_the_documented_default_is_the_codes(variable: str) -> None:
    documented = ENVIRONMENT[variable][1]
    if variable in VARIABLES:
        field, parse = VARIABLES[variable]
        actual = getattr(Settings(domain="example.com"), field)
    elif variable in TLS_VARIABLES:  # Settings.tls (consul_lb/tls/settings.py)
        field, parse = TLS_VARIABLES[variable]
        actual = getattr(Settings(domain="example.com").tls, field)
    elif variable in ACME_VARIABLES:  # Settings.acme (consul_lb/acme/settings.py)
        field, parse = ACME_VARIABLES[variable]
        actual = getattr(Settings(domain="example.com").acme, field)
    else:
        field, parse = COMMON_VARIABLES[variable]
        actual = getattr(Common(), field)
    if documented == "none":
        assert actual in (None, ()), f"{variable}: documented none, code has {actual!r}"
        return
    # The documented default, read by the code's own parser, is the code's default.
    assert parse(documented.replace("\\", "")) == actual, variable


def test_the_render_wait_default() -> None:
    low, high = parse_wait(ENVIRONMENT["HAPROXY_RENDER_WAIT"][1])
    defaults = Settings(domain="example.com")
    assert (low, high) == (defaults.render_wait_min, defaults.render_wait_max)


def test_every_variable_row_says_its_unit() -> None:
    for variable, row in ENVIRONMENT.items():
        assert len(row) == 4 and row[2], f"{variable}: no unit"


TAG_ROWS = {code(r[0]).split("=")[0]: r for r in table("### Service tags")}


def test_every_tag_is_in_the_readme() -> None:
    assert {f"HAPROXY.{key}" for key in TAGS} == set(TAG_ROWS)


@pytest.mark.parametrize("key", sorted(TAGS))
def test_the_documented_tag_default_is_the_codes(key: str) -> None:
    default = TAG_ROWS[f"HAPROXY.{key}"][3]
    field = TAGS[key][0]
    actual = getattr(ServiceOptions(), field)
    value = code(default)
    if not default.startswith("`"):  # "none", "everyone": no value
        assert actual in (None, ()), f"{key}: documented {default!r}, code has {actual!r}"
        return
    tags = ["HAPROXY.PROTOCOL=tcp"] if key == "FRONTEND.PORT" else []
    try:
        parsed = getattr(parse_tags([*tags, f"HAPROXY.{key}={value}"]), field)
    except TagError as exc:  # pragma: no cover - a wrong README default
        pytest.fail(f"{key}: the documented default {value!r} is refused: {exc}")
    assert parsed == actual, key


def endpoint_paths() -> set[str]:
    return {code(r[0]) for r in table("Everything an operator looks at is on the stats port")}


def test_the_runtimes_endpoints_answer(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n")
    observer = Observer(Sources(lambda: Figures("seamless"), lambda: {}, config, lambda: []))
    template = (ROOT / "templates" / "haproxy.cfg.j2").read_text()
    routed = set(re.search(r"acl runtime_endpoint path (.+)", template).group(1).split())  # type: ignore[union-attr]
    documented = {p for p in endpoint_paths() if p in routed}
    assert routed <= endpoint_paths()
    for path in documented:
        assert observer.answer(path)[0] == 200, path
    for path in endpoint_paths() - routed:
        # Served by HAProxy itself: named in the template.
        assert path in template or path == "/", path


def test_every_runtime_metric_is_in_the_readme() -> None:
    figures = Figures(
        "seamless",
        errors={"apply": 1},
        watches=[WatchFigures("services", 1.0, 0)],
        acme_orders={},  # ACME on: its metrics too
    )
    produced = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(exposition(lambda: figures).decode())
    }
    rows = table("The runtime's metrics, read from its counters at scrape time")
    documented = {code(r[0]).split("{")[0] for r in rows} - {"consul_lb_haproxy_exporter_up"}
    assert produced == documented


def log_formats() -> list[re.Pattern[str]]:
    """Every format string the runtime logs with, as a regular expression."""
    patterns = []
    for path in (ROOT / "runtime" / "consul_lb").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in {"debug", "info", "warning", "error", "exception", "log"}:
                continue
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    parts = re.split(r"%(?:\.\d+)?[sdrf]", arg.value)
                    if len("".join(parts).strip()) < 8:
                        continue  # "%s" and the like: says nothing of the line
                    patterns.append(re.compile(".*".join(re.escape(p) for p in parts) + r"\Z"))
    return patterns


def quoted_log_lines() -> list[str]:
    blocks = re.findall(r"```log\n(.*?)```", README, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("line", quoted_log_lines())
def test_a_quoted_log_line_is_one_the_code_prints(line: str) -> None:
    # A line is printed when a format matches it, or when it is one of the messages the
    # code builds for a "%s" format (report lines, the limits' description).
    built = [
        re.compile(r"skipping service .*: .*\Z"),
        re.compile(
            r"open-file limit \d+ allows at most maxconn \d+: "
            r"using it instead of HAPROXY_MAXCONN_GLOBAL=\d+\Z"
        ),
    ]
    sources = "\n".join(p.read_text() for p in (ROOT / "runtime" / "consul_lb").rglob("*.py"))
    assert 'f"skipping service {s.service!r}: {s.reason}"' in sources
    assert '"using it instead of HAPROXY_MAXCONN_GLOBAL={asked_global}"' in sources
    assert any(p.match(line) for p in [*log_formats(), *built]), line


def test_there_are_quoted_log_lines_to_check() -> None:
    assert len(quoted_log_lines()) >= 3

"""Pure parts of the image tooling: build and push stream handling."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devtools import images, progress


def test_push_progress_returns_the_digest_and_shows_layer_states() -> None:
    shown: list[str] = []
    lines: list[dict[str, Any]] = [
        {"status": "Preparing", "id": "abc"},
        {"status": "Pushing", "id": "abc", "progress": "[==>  ]"},
        {"status": "Pushed", "id": "abc"},
        {"status": "latest: digest: sha256:1234 size: 42"},
        {"aux": {"Tag": "latest", "Digest": "sha256:1234", "Size": 42}},
    ]
    assert images.push_progress(iter(lines), shown.append) == "sha256:1234"
    assert shown == ["  abc: Preparing", "  abc: Pushed"]


def test_push_progress_reports_registry_errors() -> None:
    lines: list[dict[str, Any]] = [
        {"status": "Preparing", "id": "abc"},
        {"error": "denied", "errorDetail": {"message": "denied: access forbidden"}},
    ]
    with pytest.raises(images.ImageError, match="denied: access forbidden"):
        images.push_progress(iter(lines), lambda _line: None)


def test_build_log_failure_ends_with_the_failing_steps_error() -> None:
    chunks: list[dict[str, Any]] = [
        {"stream": "Step 3/5 : RUN apt-get install nosuchpackage\n"},
        {"stream": "E: Unable to locate package nosuchpackage\n"},
        {
            "error": "The command '/bin/sh -c apt-get install nosuchpackage' returned a "
            "non-zero code: 100",
            "errorDetail": {
                "message": "The command '/bin/sh -c apt-get install nosuchpackage' "
                "returned a non-zero code: 100"
            },
        },
    ]
    with pytest.raises(images.ImageError) as info:
        images.stream_build_log(iter(chunks), lambda _line: None)
    assert "returned a non-zero code: 100" in str(info.value)
    assert "Unable to locate package nosuchpackage" in str(info.value)


def test_build_log_joins_lines_that_docker_sent_in_pieces() -> None:
    chunks: list[dict[str, Any]] = [
        {"stream": "Step 2/2 : RUN apt-get install x\n ---> Running in 1f\n"},
        {"stream": "\x1b[91mE:\x1b[0m"},
        {"stream": "\x1b[91m Unable to locate package x\x1b[0m"},
        {"stream": "\x1b[91m\n"},
        {"stream": "E: Unable to locate package y"},
        {"aux": {"ID": "sha256:12"}},
    ]
    shown: list[str] = []
    assert images.stream_build_log(iter(chunks), shown.append) == "sha256:12"
    assert [line.replace("\x1b[91m", "").replace("\x1b[0m", "") for line in shown] == [
        "Step 2/2 : RUN apt-get install x",
        " ---> Running in 1f",
        "E: Unable to locate package x",
        "E: Unable to locate package y",
    ]


def test_image_names_tag_latest_too() -> None:
    names = images.ImageNames("acme", "1.2.3")
    assert names.tags("haproxy") == ["acme/haproxy:1.2.3", "acme/haproxy:latest"]
    assert images.ImageNames("acme", "latest").tags("haproxy") == ["acme/haproxy:latest"]


class FakeAPI:
    """The two calls `images.build` makes of Docker's low-level API."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.build_args: dict[str, Any] = {}
        self.tags: list[tuple[str, str, str]] = []

    def build(self, **kwargs: Any) -> Any:
        self.build_args = kwargs
        return iter(self.chunks)

    def tag(self, image_id: str, repo: str, tag: str) -> None:
        self.tags.append((image_id, repo, tag))


def test_an_image_build_is_one_step_that_counts_dockers_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks: list[dict[str, Any]] = [
        {"stream": "Step 1/3 : ARG BASE_IMAGE\n"},
        {"stream": "Step 2/3 : FROM base\n"},
        {"stream": " ---> 1234\n"},
        {"stream": "Step 3/3 : RUN apt-sources.sh trixie\n"},
        {"aux": {"ID": "sha256:0123456789abcdef0123"}},
    ]
    client = SimpleNamespace(api=FakeAPI(chunks))
    out = io.StringIO()
    steps = progress.Progress(tmp_path / "build.log", out=out, live=False)
    statuses: list[str] = []
    with steps.step("building ns/haproxy:1.0") as step:
        monkeypatch.setattr(step, "status", statuses.append)
        images.build(
            client,
            images.ROOT / "images" / "haproxy",
            "ns/haproxy:1.0",
            {"DEBIAN_MIRROR": "http://m.example/debian"},
            {},
            step,
            ["ns/haproxy:latest"],
        )
    assert statuses == ["step 1/3", "step 2/3", "step 3/3"]
    assert "building ns/haproxy:1.0 ... built in 3 steps (sha256:0123456789ab)" in out.getvalue()
    assert client.api.build_args["buildargs"] == {"DEBIAN_MIRROR": "http://m.example/debian"}
    assert client.api.tags == [("sha256:0123456789abcdef0123", "ns/haproxy", "latest")]
    assert "Step 2/3 : FROM base" in (tmp_path / "build.log").read_text()

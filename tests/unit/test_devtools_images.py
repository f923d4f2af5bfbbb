"""Pure parts of the image tooling: build and push stream handling."""

from __future__ import annotations

from typing import Any

import pytest

from devtools import images


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


def test_image_names_tag_latest_too() -> None:
    names = images.ImageNames("acme", "1.2.3")
    assert names.tags("haproxy") == ["acme/haproxy:1.2.3", "acme/haproxy:latest"]
    assert images.ImageNames("acme", "latest").tags("haproxy") == ["acme/haproxy:latest"]

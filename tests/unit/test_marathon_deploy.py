"""Contract tests for `devtools.marathon.deploy` against a local fake of Marathon's REST API.

The fake implements only what the deploy task uses: `PUT /v2/apps/{id}` (validating the
body against Marathon's schema, like Marathon answering 422) and `GET /v2/deployments`.
Its answers follow the shapes in Marathon's API docs (apps.raml, deployments.json). This is
not a run against a real Marathon.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest

from devtools import marathon

LOCKED_MESSAGE = (
    "App is locked by one or more deployments. Override with the option '?force=true'. "
    "View details at '/v2/deployments/<DEPLOYMENT_ID>'."
)


@dataclass
class FakeMarathon:
    """State and knobs of the fake. Each test sets the knobs it needs."""

    url: str = ""
    # Polls of /v2/deployments before a deployment finishes. None means it never finishes.
    polls_to_finish: int | None = 3
    # An Authorization header value that every request must carry, if set.
    required_auth: str | None = None
    # A deployment that already holds the app: PUT answers 409 unless ?force=true.
    locked_by: str | None = None
    # Answer every request with this 5xx status.
    fail_with: int | None = None
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, list[str]], str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        with self.lock:
            self.requests.append((method, parts.path, query, headers.get("Authorization")))
            if self.fail_with is not None:
                return self.fail_with, {"message": "Marathon is not the leader"}
            auth = headers.get("Authorization")
            if self.required_auth is not None and auth != self.required_auth:
                return 401, {"message": "Invalid username or password."}
            if method == "PUT" and parts.path.startswith("/v2/apps/"):
                return self.put_app(parts.path.removeprefix("/v2/apps"), query, body)
            if method == "GET" and parts.path == "/v2/deployments":
                return 200, self.list_deployments()
            return 404, {"message": f"Unknown resource {parts.path}"}

    def put_app(self, app_id: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        try:
            app = json.loads(body)
        except ValueError:
            return 400, {"message": "Invalid JSON", "details": []}
        validator = jsonschema.Draft4Validator(marathon.load_schema())
        details = [
            {"path": "/" + "/".join(str(p) for p in e.absolute_path), "errors": [e.message]}
            for e in sorted(validator.iter_errors(app), key=lambda e: list(map(str, e.path)))
        ]
        if details:
            return 422, {"message": "Object is not valid", "details": details}
        force = query.get("force") == ["true"]
        if self.locked_by is not None and not force:
            return 409, {"message": LOCKED_MESSAGE, "deployments": [{"id": self.locked_by}]}
        if self.locked_by is not None:
            # Marathon cancels the running deployment when forced.
            self.deployments.pop(self.locked_by, None)
            self.locked_by = None
        status = 200 if app_id in self.apps else 201
        self.apps[app_id] = app
        deployment_id = str(uuid.uuid4())
        steps = self.polls_to_finish
        self.deployments[deployment_id] = {
            "id": deployment_id,
            "version": "2024-01-01T00:00:00.000Z",
            "affectedApps": [app_id],
            "affectedPods": [],
            "steps": [{"actions": [{"action": "RestartApplication", "app": app_id}]}],
            "currentActions": [
                {"action": "RestartApplication", "app": app_id, "readinessCheckResults": []}
            ],
            "currentStep": 0,
            "totalSteps": steps if steps is not None else 1,
            "polls_left": steps,
        }
        return status, {"deploymentId": deployment_id, "version": "2024-01-01T00:00:00.000Z"}

    def list_deployments(self) -> list[dict[str, Any]]:
        listed = []
        for deployment_id, dep in list(self.deployments.items()):
            if dep["polls_left"] is not None:
                if dep["polls_left"] == 0:
                    del self.deployments[deployment_id]
                    continue
                dep["polls_left"] -= 1
                dep["currentStep"] += 1
            listed.append({k: v for k, v in dep.items() if k != "polls_left"})
        return listed


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests honours *_PROXY variables; the fake must be reached directly.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeMarathon]:
    state = FakeMarathon()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = state.handle(
                self.command, self.path, self.headers, self.rfile.read(length)
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def app() -> dict[str, Any]:
    rendered = marathon.render_app(
        app_id=marathon.DEFAULT_APP_ID,
        instances=2,
        image=marathon.image_reference(),
        strategy="seamless",
    )
    marathon.validate_app(rendered)
    return rendered


def run(fake: FakeMarathon, lines: list[str] | None = None, **kwargs: Any) -> str:
    args: dict[str, Any] = {
        "marathon_url": fake.url,
        "app": app(),
        "force": False,
        "timeout": 2.0,
        "poll_interval": 0.01,
        "auth": None,
        "token": None,
        "progress": (lines if lines is not None else []).append,
    }
    args.update(kwargs)
    return marathon.deploy(**args)


def test_deploy_follows_the_deployment_until_it_finishes(fake: FakeMarathon) -> None:
    lines: list[str] = []
    deployment_id = run(fake, lines)

    assert fake.apps == {"/consul-lb/haproxy": app()}
    assert fake.deployments == {}
    methods = [(m, p) for m, p, _, _ in fake.requests]
    assert methods[0] == ("PUT", "/v2/apps/consul-lb/haproxy")
    assert methods[1:] == [("GET", "/v2/deployments")] * 4  # 3 polls running, 1 finished
    assert fake.requests[0][2] == {}  # no ?force
    assert lines[0].endswith(f"deployment {deployment_id} started for /consul-lb/haproxy")
    assert [line.split("] ", 1)[1] for line in lines[1:]] == [
        f"deployment {deployment_id}: step {n}/3: RestartApplication /consul-lb/haproxy"
        for n in (1, 2, 3)
    ] + [f"deployment {deployment_id} finished"]
    assert all(line.startswith("[") and "s] " in line for line in lines)


def test_deployment_that_is_already_gone_counts_as_finished(fake: FakeMarathon) -> None:
    fake.polls_to_finish = 0
    lines: list[str] = []
    deployment_id = run(fake, lines)
    assert lines[-1].endswith(f"deployment {deployment_id} finished")
    assert len(lines) == 2


def test_conflict_offers_force_and_force_replaces_the_deployment(fake: FakeMarathon) -> None:
    fake.locked_by = "d0d0-running"
    with pytest.raises(marathon.DeployError) as info:
        run(fake)
    message = str(info.value)
    assert "HTTP 409" in message
    assert "d0d0-running" in message
    assert "--force" in message
    assert LOCKED_MESSAGE in message
    assert fake.apps == {}

    deployment_id = run(fake, force=True)
    puts = [query for method, _, query, _ in fake.requests if method == "PUT"]
    assert puts == [{}, {"force": ["true"]}]
    assert deployment_id != "d0d0-running"
    assert list(fake.apps) == ["/consul-lb/haproxy"]


def test_unprocessable_definition_shows_marathons_message_and_details(
    fake: FakeMarathon,
) -> None:
    bad = app()
    bad["instances"] = -1
    bad["container"]["type"] = "DOKER"
    with pytest.raises(marathon.DeployError) as info:
        run(fake, app=bad)
    assert str(info.value) == (
        "PUT /v2/apps/consul-lb/haproxy: Marathon rejected the request (HTTP 422): "
        "Object is not valid\n"
        "  /container/type: 'DOKER' is not one of ['MESOS', 'DOCKER']\n"
        "  /instances: -1 is less than the minimum of 0"
    )
    assert [m for m, *_ in fake.requests] == ["PUT"]


def test_other_client_errors_show_marathons_message(fake: FakeMarathon) -> None:
    # A base URL with a path this Marathon does not serve: 404 with Marathon's message.
    with pytest.raises(marathon.DeployError) as info:
        run(fake, marathon_url=fake.url + "/marathon/")
    assert str(info.value) == (
        "PUT /v2/apps/consul-lb/haproxy: Marathon rejected the request (HTTP 404): "
        "Unknown resource /marathon/v2/apps/consul-lb/haproxy"
    )


def test_trailing_slash_in_the_url_is_fine(fake: FakeMarathon) -> None:
    run(fake, marathon_url=fake.url + "/")
    assert fake.requests[0][1] == "/v2/apps/consul-lb/haproxy"


def test_timeout_while_deployment_runs(fake: FakeMarathon) -> None:
    fake.polls_to_finish = None
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(marathon.DeployError) as info:
        run(fake, lines, timeout=0.2)
    assert time.monotonic() - started < 1.5
    message = str(info.value)
    assert "still running after 0.2s" in message
    assert "step" in message and "RestartApplication /consul-lb/haproxy" in message
    assert "DELETE /v2/deployments/" in message
    assert len(lines) >= 3  # it kept polling until the deadline


def test_bad_basic_auth_credentials(fake: FakeMarathon) -> None:
    fake.required_auth = "Basic " + base64.b64encode(b"ops:s3cret").decode()
    with pytest.raises(marathon.DeployError) as info:
        run(fake, auth=("ops", "wrong"))
    message = str(info.value)
    assert "rejected the credentials (HTTP 401): Invalid username or password." in message
    assert "MARATHON_TOKEN" in message
    assert "wrong" not in message

    run(fake, auth=("ops", "s3cret"))
    assert all(auth == fake.required_auth for *_, auth in fake.requests[1:])


def test_token_auth_uses_the_dcos_header(fake: FakeMarathon) -> None:
    fake.required_auth = "token=abc.def"
    with pytest.raises(marathon.DeployError, match="HTTP 401"):
        run(fake, token="nope")
    run(fake, token="abc.def")
    assert fake.requests[-1][3] == "token=abc.def"


def test_auth_and_token_together_are_refused(fake: FakeMarathon) -> None:
    with pytest.raises(ValueError, match="not both"):
        run(fake, auth=("a", "b"), token="t")


def test_server_error(fake: FakeMarathon) -> None:
    fake.fail_with = 503
    with pytest.raises(
        marathon.DeployError, match=r"Marathon failed \(HTTP 503\): Marathon is not the leader"
    ):
        run(fake)


def test_unreachable_marathon() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more, so the connection is refused.
    with pytest.raises(marathon.DeployError) as info:
        marathon.deploy(
            marathon_url=f"http://127.0.0.1:{port}",
            app=app(),
            force=False,
            timeout=2.0,
            poll_interval=0.01,
            auth=None,
            token=None,
            progress=print,
        )
    message = str(info.value)
    assert f"cannot reach Marathon at http://127.0.0.1:{port}/v2/apps/consul-lb/haproxy" in message
    assert "Connection refused" in message
    assert "--marathon" in message


def test_credentials_from_flag_and_environment() -> None:
    env = {"MARATHON_USER": "env-user", "MARATHON_PASSWORD": "env-pw", "MARATHON_TOKEN": "tok"}
    assert marathon.credentials("ops:pw:with:colons", env) == (("ops", "pw:with:colons"), None)
    assert marathon.credentials("ops", env) == (("ops", "env-pw"), None)
    assert marathon.credentials(None, env) == (("env-user", "env-pw"), None)
    assert marathon.credentials(None, {"MARATHON_TOKEN": "tok"}) == (None, "tok")
    assert marathon.credentials(None, {}) == (None, None)

"""Render, validate and deploy the HAProxy app definition on Marathon.

The pieces are kept separate so that `invoke deploy` can chain them and the tests can drive
each one on its own:

* `render_app` starts from the shipped `deploy/marathon/haproxy.json` and fills in the
  image, instance count and reload strategy.
* `validate_app` checks a definition against Marathon's own (vendored, draft-04) JSON
  Schema and the project's rules, such as never `privileged`.
* `deploy` does `PUT /v2/apps/{id}` and follows the deployment on `/v2/deployments`.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import requests

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_APP = ROOT / "deploy" / "marathon" / "haproxy.json"
SCHEMA_FILE = Path(__file__).resolve().parent / "marathon_schema" / "AppDefinition.json"

DEFAULT_APP_ID = "/consul-lb/haproxy"
DEFAULT_NAMESPACE = "consul-lb"
DEFAULT_TAG = "latest"
STRATEGIES = ("seamless", "syn-drop")
# The drain time assumed when HAPROXY_DRAIN_SECONDS is not set. Keep in step with the image.
DEFAULT_DRAIN_SECONDS = 5
# The only capability the project ever asks for, and only for the syn-drop strategy. It needs
# iptables to drop SYNs while HAProxy reloads.
NET_ADMIN = {"key": "cap-add", "value": "NET_ADMIN"}

# Per-request limit, so one hung HTTP call cannot outlast the whole --timeout.
HTTP_TIMEOUT = 10.0
# The runtime's rule for HAPROXY_DOM, mirrored here so that a deploy never ships a domain
# that every instance would refuse at start (exit 2): runtime/consul_lb/settings.py,
# `_domain` and `is_dns_name`. The runtime's is the reference; keep the two in step.
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


class AppDefinitionError(ValueError):
    """The app definition breaks Marathon's schema or a project rule."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid Marathon app definition:\n  " + "\n  ".join(errors))


class DeployError(RuntimeError):
    """Deploying to Marathon failed. The message is meant for the user."""


def image_reference(namespace: str = DEFAULT_NAMESPACE, tag: str = DEFAULT_TAG) -> str:
    """The image name the build produces: `<namespace>/haproxy:<tag>`."""
    return f"{namespace}/haproxy:{tag}"


def load_app(path: Path = SHIPPED_APP) -> dict[str, Any]:
    app: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return app


@functools.cache
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


def domain_name(raw: str) -> str:
    """``raw`` as the runtime reads HAPROXY_DOM (trimmed, no final dot, lower-cased), if it
    is a DNS name of at most 253 characters whose labels are [a-z0-9-] and neither start
    nor end with '-'; else ValueError."""
    value = raw.strip().rstrip(".").lower()
    if not (0 < len(value) <= 253 and all(DNS_LABEL.match(part) for part in value.split("."))):
        raise ValueError(f"expected a DNS name such as example.com, got {raw!r}")
    return value


# --------------------------------------------------------------------------- render


def render_app(
    *,
    app_id: str,
    instances: int | None,
    image: str,
    strategy: str,
    domain: str | None = None,
    consul_addr: str | None = None,
    base: Path = SHIPPED_APP,
) -> dict[str, Any]:
    """Return the shipped definition with the deploy-time values filled in.

    ``instances`` None keeps the definition's count (0 is a count). It does not validate:
    call `validate_app` on the result.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown reload strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}"
        )
    app = load_app(base)
    app["id"] = app_id
    if instances is not None:
        if instances < 0:
            raise ValueError(f"instances: expected 0 or more, got {instances}")
        app["instances"] = instances
    docker = app.setdefault("container", {}).setdefault("docker", {})
    docker["image"] = image
    # Take out any cap-add=NET_ADMIN, then put it back only for syn-drop. The default
    # (seamless) strategy then runs with Docker's default capability set.
    params = [p for p in docker.get("parameters", []) if p != NET_ADMIN]
    if strategy == "syn-drop":
        params.append(dict(NET_ADMIN))
    docker["parameters"] = params
    env = app.setdefault("env", {})
    env["HAPROXY_RELOAD_STRATEGY"] = strategy
    if domain is not None:
        env["HAPROXY_DOM"] = domain
    if consul_addr is not None:
        env["CONSUL_HTTP_ADDR"] = consul_addr
    return app


# --------------------------------------------------------------------------- validate


def _json_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _shorten(text: str, limit: int = 200) -> str:
    # jsonschema puts the whole offending instance into some messages, which can be the
    # whole app definition. Keep one error to one readable line.
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_errors(app: Any) -> list[str]:
    errors: list[str] = []
    # Draft4Validator explicitly: the schema's "$schema" is the unversioned alias, but its
    # keywords are draft-04 (see devtools/marathon_schema/README.md).
    for err in jsonschema.Draft4Validator(load_schema()).iter_errors(app):
        path = list(err.absolute_path)
        if err.validator == "required":
            # Name the missing field itself, not its parent: "id: required".
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            errors.append(f"{_json_path([*path, missing])}: required")
        elif err.validator == "additionalProperties" and "properties" in err.schema:
            # One line per unexpected key, so the message names the field itself.
            extra = sorted(k for k in err.instance if k not in err.schema["properties"])
            errors += [f"{_json_path([*path, key])}: unknown property" for key in extra] or [
                f"{_json_path(path)}: {_shorten(err.message)}"
            ]
        elif err.validator == "not":
            rule = json.dumps(err.validator_value, separators=(",", ":"))
            errors.append(f"{_json_path(path)}: must not match {_shorten(rule)}")
        else:
            errors.append(f"{_json_path(path)}: {_shorten(err.message)}")
    return errors


def _project_errors(app: Mapping[str, Any]) -> list[str]:
    """Rules that Marathon's schema allows but this project refuses."""
    errors: list[str] = []
    container = app.get("container")
    docker = container.get("docker") if isinstance(container, dict) else None
    params: list[Any] = []
    if isinstance(docker, dict):
        if docker.get("privileged") is True:
            errors.append("container.docker.privileged: must not be true (never run privileged)")
        if isinstance(docker.get("parameters"), list):
            params = docker["parameters"]
    for i, param in enumerate(params):
        # `--privileged` can also be smuggled in as a raw docker CLI parameter.
        if isinstance(param, dict) and param.get("key") == "privileged":
            errors.append(
                f"container.docker.parameters[{i}]: 'privileged' is not allowed "
                "(never run privileged)"
            )

    env = app.get("env")
    env = env if isinstance(env, dict) else {}
    dom = env.get("HAPROXY_DOM")
    if not isinstance(dom, str) or not dom.strip():
        errors.append("env.HAPROXY_DOM: required (the domain HAProxy routes Host headers for)")
    else:
        try:
            domain_name(dom)
        except ValueError as exc:
            errors.append(f"env.HAPROXY_DOM: {exc} (the runtime would refuse to start)")
    strategy = env.get("HAPROXY_RELOAD_STRATEGY", "seamless")
    if strategy not in STRATEGIES:
        errors.append(f"env.HAPROXY_RELOAD_STRATEGY: {strategy!r} is not one of {list(STRATEGIES)}")
    has_net_admin = NET_ADMIN in params
    if strategy == "syn-drop" and not has_net_admin:
        errors.append(
            "container.docker.parameters: syn-drop needs {'key': 'cap-add', 'value': 'NET_ADMIN'}"
        )
    if strategy != "syn-drop" and has_net_admin:
        errors.append(
            f"container.docker.parameters: cap-add=NET_ADMIN is only for syn-drop, not {strategy!r}"
        )

    # The drain only works if Mesos waits long enough before it escalates SIGTERM to SIGKILL.
    # Without taskKillGracePeriodSeconds, Mesos uses its own short default.
    raw_drain = env.get("HAPROXY_DRAIN_SECONDS", str(DEFAULT_DRAIN_SECONDS))
    try:
        drain = float(raw_drain)
    except (TypeError, ValueError):
        errors.append(f"env.HAPROXY_DRAIN_SECONDS: {raw_drain!r} is not a number of seconds")
    else:
        grace = app.get("taskKillGracePeriodSeconds")
        if not isinstance(grace, int) or grace <= drain:
            errors.append(
                f"taskKillGracePeriodSeconds: must be greater than the drain time ({drain:g}s, "
                "env.HAPROXY_DRAIN_SECONDS), or Mesos kills HAProxy while it drains"
            )
    return errors


def validate_app(app: dict[str, Any]) -> None:
    """Raise `AppDefinitionError` listing every problem, each prefixed with its JSON path."""
    errors = _schema_errors(app)
    if isinstance(app, dict):
        errors += _project_errors(app)
    if errors:
        raise AppDefinitionError(sorted(set(errors)))


# --------------------------------------------------------------------------- deploy


def credentials(
    user: str | None, environ: Mapping[str, str]
) -> tuple[tuple[str, str] | None, str | None]:
    """Work out `(basic_auth, token)` from `--user` and the environment.

    `--user USER:PASS` wins over `MARATHON_USER`/`MARATHON_PASSWORD`. A `--user` without a
    colon takes its password from `MARATHON_PASSWORD`. `MARATHON_TOKEN` (a DC/OS ACS token)
    is used only when no basic-auth user is given.
    """
    user = user or environ.get("MARATHON_USER") or None
    if user:
        name, sep, password = user.partition(":")
        if not sep:
            password = environ.get("MARATHON_PASSWORD", "")
        return (name, password), None
    return None, environ.get("MARATHON_TOKEN") or None


def _error_text(resp: requests.Response) -> str:
    """Marathon's own message plus its `details`: {"message": ..., "details": [...]}."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = resp.text.strip()
        return _shorten(text) if text else resp.reason or "no message"
    parts = [str(body.get("message", "no message"))]
    for detail in body.get("details") or []:
        if isinstance(detail, dict):
            errs = detail.get("errors") or [detail.get("message", "")]
            parts.append(f"{detail.get('path', '?')}: {'; '.join(map(str, errs))}")
        else:
            parts.append(str(detail))
    return "\n  ".join(parts)


def _check(resp: requests.Response, what: str, app_id: str) -> None:
    code = resp.status_code
    if code < 400:
        return
    message = _error_text(resp)
    if code == 401:
        raise DeployError(
            f"{what}: Marathon rejected the credentials (HTTP 401): {message}\n"
            "Check --user / MARATHON_USER + MARATHON_PASSWORD, or MARATHON_TOKEN."
        )
    if code == 403:
        raise DeployError(
            f"{what}: the credentials are not allowed to do this (HTTP 403): {message}"
        )
    if code == 409:
        try:
            ids = [d["id"] for d in resp.json().get("deployments", [])]
        except (ValueError, AttributeError, KeyError, TypeError):
            ids = []
        running = f" ({', '.join(ids)})" if ids else ""
        raise DeployError(
            f"{what}: app {app_id} is locked by a deployment in progress{running} "
            f"(HTTP 409): {message}\n"
            "Wait for it to finish, or rerun with --force to replace it."
        )
    if code < 500:
        raise DeployError(f"{what}: Marathon rejected the request (HTTP {code}): {message}")
    raise DeployError(f"{what}: Marathon failed (HTTP {code}): {message}")


def _short_reason(exc: requests.RequestException) -> str:
    # requests wraps urllib3 errors whose text starts with an object repr. The
    # "[Errno ...] ..." part is what a person needs (refused, unknown host, ...).
    match = re.search(r"\[Errno [^\]]+\] [^'\")]+", str(exc))
    return match.group(0).strip() if match else type(exc).__name__


def _request(
    session: requests.Session,
    method: str,
    url: str,
    what: str,
    timeout: float,
    **kwargs: Any,
) -> requests.Response:
    try:
        return session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise DeployError(f"{what}: Marathon at {url} did not answer within {timeout:g}s") from exc
    except requests.ConnectionError as exc:
        raise DeployError(
            f"{what}: cannot reach Marathon at {url}: {_short_reason(exc)}\n"
            "Check the --marathon URL and that Marathon is up."
        ) from exc
    except requests.RequestException as exc:
        raise DeployError(f"{what}: request to {url} failed: {exc}") from exc


def _describe(deployment: Mapping[str, Any]) -> str:
    actions = [
        f"{a.get('action', '?')} {a.get('app') or a.get('pod') or ''}".strip()
        for a in deployment.get("currentActions") or []
        if isinstance(a, dict)
    ]
    step = f"step {deployment.get('currentStep', '?')}/{deployment.get('totalSteps', '?')}"
    return f"{step}: {', '.join(actions) or 'waiting'}"


def deploy(
    *,
    marathon_url: str,
    app: dict[str, Any],
    force: bool = False,
    timeout: float = 600.0,
    poll_interval: float = 2.0,
    auth: tuple[str, str] | None = None,
    token: str | None = None,
    progress: Callable[[str], None] = print,
) -> str:
    """`PUT /v2/apps/{id}` and follow the deployment until it finishes. Returns its id.

    Marathon drops a deployment from `/v2/deployments` when it has finished. That endpoint
    does not tell success from cancellation (for example, someone else's `--force`), so
    "gone" is reported as finished. Raises `DeployError` with a message for the user.
    """
    if auth is not None and token is not None:
        raise ValueError("give basic-auth credentials or a token, not both")
    app_id = app.get("id")
    if not isinstance(app_id, str) or not app_id.strip("/"):
        raise ValueError("the app definition has no id")
    base = marathon_url.rstrip("/")
    with requests.Session() as session:
        if token is not None:
            # DC/OS-style ACS token. Marathon behind DC/OS's admin router expects this exact
            # form, not "Bearer".
            session.headers["Authorization"] = f"token={token}"
        elif auth is not None:
            session.auth = auth
        return _put_and_follow(session, base, app, app_id, force, timeout, poll_interval, progress)


def _put_and_follow(
    session: requests.Session,
    base: str,
    app: dict[str, Any],
    app_id: str,
    force: bool,
    timeout: float,
    poll_interval: float,
    progress: Callable[[str], None],
) -> str:
    start = time.monotonic()
    deadline = start + timeout

    def budget() -> float:
        return max(0.1, min(HTTP_TIMEOUT, deadline - time.monotonic()))

    what = f"PUT /v2/apps/{app_id.strip('/')}"
    resp = _request(
        session,
        "PUT",
        f"{base}/v2/apps/{app_id.strip('/')}",
        what,
        budget(),
        json=app,
        params={"force": "true"} if force else None,
    )
    _check(resp, what, app_id)
    try:
        deployment_id = str(resp.json()["deploymentId"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DeployError(
            f"{what}: unexpected answer from Marathon: {_shorten(resp.text)}"
        ) from exc
    progress(f"[{time.monotonic() - start:6.1f}s] deployment {deployment_id} started for {app_id}")

    while True:
        resp = _request(session, "GET", f"{base}/v2/deployments", "GET /v2/deployments", budget())
        _check(resp, "GET /v2/deployments", app_id)
        try:
            running = {d["id"]: d for d in resp.json()}
        except (ValueError, KeyError, TypeError) as exc:
            raise DeployError(
                f"GET /v2/deployments: unexpected answer from Marathon: {_shorten(resp.text)}"
            ) from exc
        elapsed = time.monotonic() - start
        current = running.get(deployment_id)
        if current is None:
            progress(f"[{elapsed:6.1f}s] deployment {deployment_id} finished")
            return deployment_id
        progress(f"[{elapsed:6.1f}s] deployment {deployment_id}: {_describe(current)}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeployError(
                f"deployment {deployment_id} still running after {timeout:g}s "
                f"({_describe(current)}). Marathon keeps going. Follow it at "
                f"{base}/v2/deployments, or cancel it with DELETE /v2/deployments/{deployment_id}."
            )
        time.sleep(min(poll_interval, left))

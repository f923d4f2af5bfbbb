"""``PUT /v2/apps/{id}`` and the deployment followed on ``/v2/deployments``, with
messages meant for the user."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from devtools.marathon.validate import shorten

# Per-request limit, so one hung HTTP call cannot outlast the whole --timeout.
HTTP_TIMEOUT = 10.0


class DeployError(RuntimeError):
    """Deploying to Marathon failed. The message is meant for the user."""


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
        return shorten(text) if text else resp.reason or "no message"
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
        raise DeployError(f"{what}: unexpected answer from Marathon: {shorten(resp.text)}") from exc
    progress(f"[{time.monotonic() - start:6.1f}s] deployment {deployment_id} started for {app_id}")

    while True:
        resp = _request(session, "GET", f"{base}/v2/deployments", "GET /v2/deployments", budget())
        _check(resp, "GET /v2/deployments", app_id)
        try:
            running = {d["id"]: d for d in resp.json()}
        except (ValueError, KeyError, TypeError) as exc:
            raise DeployError(
                f"GET /v2/deployments: unexpected answer from Marathon: {shorten(resp.text)}"
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

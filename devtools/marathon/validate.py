"""Checks of an app definition: Marathon's own (vendored, draft-04) JSON Schema, and the
project's rules (never privileged, NET_ADMIN only for syn-drop, a valid domain, a grace
period longer than the drain)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

from devtools.marathon.app import (
    DEFAULT_DRAIN_SECONDS,
    NET_ADMIN,
    STRATEGIES,
    domain_name,
    load_schema,
)


class AppDefinitionError(ValueError):
    """The app definition breaks Marathon's schema or a project rule."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid Marathon app definition:\n  " + "\n  ".join(errors))


def _json_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def shorten(text: str, limit: int = 200) -> str:
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
                f"{_json_path(path)}: {shorten(err.message)}"
            ]
        elif err.validator == "not":
            rule = json.dumps(err.validator_value, separators=(",", ":"))
            errors.append(f"{_json_path(path)}: must not match {shorten(rule)}")
        else:
            errors.append(f"{_json_path(path)}: {shorten(err.message)}")
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

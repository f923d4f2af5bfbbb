"""The HAProxy app definition: the shipped one, Marathon's schema, and the deploy-time
values (image, instance count, reload strategy, domain) filled in."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_APP = ROOT / "deploy" / "marathon" / "haproxy.json"
SCHEMA_FILE = ROOT / "devtools" / "marathon_schema" / "AppDefinition.json"

DEFAULT_APP_ID = "/consul-lb/haproxy"
DEFAULT_NAMESPACE = "consul-lb"
DEFAULT_TAG = "latest"
STRATEGIES = ("seamless", "syn-drop")
# The drain time assumed when HAPROXY_DRAIN_SECONDS is not set. Keep in step with the image.
DEFAULT_DRAIN_SECONDS = 5
# The only capability the project ever asks for, and only for the syn-drop strategy. It needs
# iptables to drop SYNs while HAProxy reloads.
NET_ADMIN = {"key": "cap-add", "value": "NET_ADMIN"}

# The runtime's rule for HAPROXY_DOM, mirrored here so that a deploy never ships a domain
# that every instance would refuse at start (exit 2): runtime/consul_lb/settings.py,
# `_domain` and `is_dns_name`. The runtime's is the reference; keep the two in step.
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


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

"""The ports a configuration binds, and whether another program holds a new one:
``haproxy -c`` does not bind, and a port taken by another program (with host networking,
any program on the host) would make every later reload fail."""

from __future__ import annotations

import re
import socket

from consul_lb import model
from consul_lb.render import HaproxyFiles
from consul_lb.settings import Settings


def port_free(port: int) -> bool:
    """Whether a new tcp frontend could bind ``port`` here. SO_REUSEADDR, as HAProxy
    binds: a port whose last connections are in TIME_WAIT is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def frontend_ports(lb: model.LoadBalancer, settings: Settings) -> list[int]:
    https = [settings.tls.https_port] if settings.tls.enabled else []
    return [settings.http_port, settings.stats_port, *https, *sorted(lb.ports)]


def taken_ports(
    lb: model.LoadBalancer, applied: model.LoadBalancer | None, current: HaproxyFiles | None
) -> dict[str, str]:
    """Services of ``lb`` whose new tcp frontend port another program holds -> why they
    are left out."""
    # Ours: what the running configuration binds (also in a dry run next to it).
    ours = set(applied.ports) if applied else set()
    if current is not None:
        ours |= {int(p) for p in re.findall(r"^frontend tcp_(\d+)$", current.config, re.M)}
    return {
        b.service: f"HAPROXY.FRONTEND.PORT={b.frontend_port} is in use by another program"
        for b in lb.tcp_backends
        if b.frontend_port is not None
        and b.frontend_port not in ours
        and not port_free(b.frontend_port)
    }

"""The server-state file, kept by the runtime rather than replayed blindly.

HAProxy saves what it knows of each server with ``show servers state`` and a new
process applies it at load (``load-server-state-from-file``), matching servers by
backend and server name. It applies it even where the new configuration says
otherwise: a saved address or port wins over the one in the new haproxy.cfg, and a
saved DRAIN or MAINT admin state comes back. So before each reload the runtime writes
the file itself, from HAProxy's answer, keeping only what must survive:

- kept: servers that keep their name, address, port and configured weight (their
  health, and weights or states an operator set at run time, survive the reload);
- dropped: servers whose address, port or weight from Consul changed (the new
  configuration's wins),
  servers the runtime drained to delete them (they start afresh if they are back),
  servers that are gone.

Format: HAProxy's management guide, "show servers state" (version 1: a version line, a
"# " header naming the fields, one line per server).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from consul_lb.model import LoadBalancer


def _same_address(saved: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(saved) == ipaddress.ip_address(address)
    except ValueError:
        return saved == address


def reconcile(
    state: str,
    lb: LoadBalancer,
    draining: Iterable[tuple[str, str]] = (),
) -> str:
    """The state to give the next process: ``state`` as ``show servers state`` printed
    it, for the load balancer ``lb`` about to be loaded; ``draining`` are the (backend,
    server) pairs the runtime put in drain to delete them."""
    lines = state.splitlines()
    if len(lines) < 2 or not lines[1].startswith("# "):
        return ""  # nothing usable: every server starts from the configuration
    fields = lines[1][2:].split()
    servers = {(b.name, s.name): s for b in lb.backends for s in b.servers}
    ours = {b.name for b in lb.backends}
    drained = set(draining)
    kept = [lines[0], lines[1]]
    for line in lines[2:]:
        values = line.split()
        if len(values) != len(fields):
            continue
        row = dict(zip(fields, values, strict=True))
        key = (row.get("be_name", ""), row.get("srv_name", ""))
        if key[0] not in ours:
            kept.append(line)  # the runtime's own backends (stats, runtime endpoints)
            continue
        server = servers.get(key)
        if server is None or key in drained:
            continue
        if row.get("srv_port") != str(server.port):
            continue
        if row.get("srv_iweight", str(server.weight)) != str(server.weight):
            continue  # Consul's weight changed: the new configuration's wins
        if (
            not _same_address(row.get("srv_addr", ""), server.address)
            and row.get("srv_fqdn") != server.address
        ):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"

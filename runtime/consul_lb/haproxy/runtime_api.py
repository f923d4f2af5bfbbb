"""Server changes without a reload, through HAProxy's runtime API (the admin socket).

Most catalog changes are instances coming and going. When two load balancers differ only
in the servers of backends whose balance algorithm accepts dynamic servers, the change is
applied with ``add server`` / ``del server`` instead of a reload:

- an added instance: ``add server`` (created in maintenance), ``enable health``, then
  ``set server ... state ready``;
- a removed or failing instance is drained, not cut: ``set server ... state drain`` (no
  new connections, open ones go on), then deleted once it has no connection left, or
  after the drain timeout (``shutdown sessions`` first).

``add server``/``del server`` were chosen over pre-allocated ``server-template`` slots
because they keep the Consul-derived server names (stable in stats, logs and the server
state file), need no slot sizing, and leave the rendered file identical to what a reload
would produce. Their limit, backends with a non-dynamic algorithm (``static-rr`` and the
hash-based ones), is handled by reloading for those.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from consul_lb.model import Backend, LoadBalancer, Server
from consul_lb.render import server_address, server_options, server_tls

log = logging.getLogger("runtime-api")

# Algorithms with which HAProxy accepts "add server" (see "add server" in HAProxy's
# management guide: the backend must use a dynamic load-balancing algorithm).
DYNAMIC_BALANCE = frozenset({"roundrobin", "leastconn", "first", "random"})


class RuntimeApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerChange:
    backend: Backend  # the new backend (for its server options)
    added: tuple[Server, ...]
    removed: tuple[Server, ...]
    moved: tuple[Server, ...] = ()  # same name (Consul ID), new address or port


def server_only_changes(old: LoadBalancer, new: LoadBalancer) -> list[ServerChange] | None:
    """The server changes between two load balancers, or None when the change is
    structural (services, tags, settings)."""

    def shape(b: Backend) -> Backend:
        return dataclasses.replace(b, servers=())

    if [shape(b) for b in old.backends] != [shape(b) for b in new.backends]:
        return None
    changes: list[ServerChange] = []
    for before, after in zip(old.backends, new.backends, strict=True):
        if before.servers == after.servers:
            continue
        if after.balance not in DYNAMIC_BALANCE:
            return None
        old_by_name = {s.name: s for s in before.servers}
        new_by_name = {s.name: s for s in after.servers}
        arriving = [s for s in after.servers if old_by_name.get(s.name) != s]
        if not all(is_ip(s.address) for s in arriving):
            # HAProxy resolves host names when it loads its configuration ("init-addr
            # libc"); a server added at run time with a host name would stay unresolved.
            return None
        if any(
            s.name in old_by_name
            and dataclasses.replace(old_by_name[s.name], address=s.address, port=s.port) != s
            for s in arriving
        ):
            return None  # a server's options changed (e.g. its maxconn): reload
        changes.append(
            ServerChange(
                after,
                tuple(s for s in after.servers if s.name not in old_by_name),
                tuple(s for s in before.servers if s.name not in new_by_name),
                tuple(s for s in after.servers if old_by_name.get(s.name, s) != s),
            )
        )
    return changes


def parse_map(text: str) -> dict[str, str]:
    """A map file's "key value" lines (HAProxy's map format; blank lines and # comments
    ignored)."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            entries[key] = value.strip()
    return entries


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


@dataclass
class Draining:
    backend: str
    server: Server
    deadline: float
    shut: bool = False


class RuntimeApi:
    """Applies server changes over the admin socket and finishes drains."""

    def __init__(self, admin: Callable[[str], str], drain_timeout: float) -> None:
        self.admin = admin
        self.drain_timeout = drain_timeout
        self.draining: dict[tuple[str, str], Draining] = {}
        self.commands = 0
        # Follows the rendered configuration (see limits.fit: checks may not fit).
        self.checks = True
        # Server options of backends with HAPROXY.BACKEND.TLS (render.server_tls).
        self.server_tls = server_tls(None)

    def _run(self, command: str, success: tuple[str, ...] = ()) -> None:
        """One command; HAProxy answers nothing on success, except for the commands whose
        success answers start as ``success`` says."""
        answer = self.admin(command).strip()
        self.commands += 1
        ok = answer.startswith(success) if success else not answer
        if not ok:
            raise RuntimeApiError(f"{command!r}: {answer or 'no answer'}")

    def _move(self, backend: str, server: Server) -> None:
        self._run(
            f"set server {backend}/{server.name} addr {server.address} port {server.port}",
            success=("IP changed", "port changed", "nothing changed", "no need to change"),
        )

    def apply(self, changes: list[ServerChange]) -> tuple[int, int]:
        """Apply the changes; (servers added or moved, servers put to drain).

        Arrivals go in before departures drain: a batch that replaces every server of a
        backend (one instance leaves as another arrives) never leaves it with none.
        """
        added = drained = 0
        for change in changes:
            be = change.backend.name
            for server in change.moved:
                # Open connections stay with the old address; new ones use the new one.
                self._move(be, server)
                added += 1
            for server in change.added:
                self._add(change.backend, server)
                added += 1
        for change in changes:
            be = change.backend.name
            for server in change.removed:
                self._run(f"set server {be}/{server.name} state drain")
                self.draining[(be, server.name)] = Draining(
                    be, server, time.monotonic() + self.drain_timeout
                )
                drained += 1
        return added, drained

    def _add(self, backend: Backend, server: Server) -> None:
        be = backend.name
        pending = self.draining.pop((be, server.name), None)
        if pending is not None:
            # Back before its drain finished: the same server, ready again.
            if pending.server != server:
                self._move(be, server)
            self._run(f"set server {be}/{server.name} state ready")
            return
        self._run(
            f"add server {be}/{server.name} "
            f"{server_address(server.address)}:{server.port} "
            f"{server_options(server, self.checks, True, self.server_tls if backend.tls else '')}",
            success=("New server registered",),
        )
        if self.checks:
            self._run(f"enable health {be}/{server.name}")
        self._run(f"set server {be}/{server.name} state ready")

    def sweep(self) -> int:
        """Delete drained servers that have no connection left, or whose drain timed out;
        returns how many were deleted."""
        if not self.draining:
            return 0
        sessions = self.current_sessions()
        deleted = 0
        now = time.monotonic()
        for key, entry in list(self.draining.items()):
            be, name = key
            busy = sessions.get(key, 0)
            if busy and now < entry.deadline:
                continue
            if busy and not entry.shut:
                log.warning(
                    "%s/%s still has %d connection(s) after the %.0fs drain timeout; closing them",
                    be,
                    name,
                    busy,
                    self.drain_timeout,
                )
                self._run(f"shutdown sessions server {be}/{name}")
                entry.shut = True
            self._run(f"set server {be}/{name} state maint")
            answer = self.admin(f"del server {be}/{name}").strip()
            self.commands += 1
            if answer.startswith("Server deleted"):
                del self.draining[key]
                deleted += 1
            else:
                # Usually idle connections still attached; try again on the next sweep.
                log.debug("del server %s/%s: %s", be, name, answer)
        return deleted

    def current_sessions(self) -> dict[tuple[str, str], int]:
        """Open sessions per (backend, server), from ``show stat``."""
        text = self.admin("show stat -1 4 -1").lstrip("# ")
        self.commands += 1
        out: dict[tuple[str, str], int] = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("scur", "").isdigit():
                out[(row["pxname"], row["svname"])] = int(row["scur"])
        return out

    def set_map(self, path: str, old: str, new: str) -> int:
        """Make the map HAProxy loaded from ``path`` hold ``new`` instead of ``old`` (both
        in map-file format); returns the number of commands."""
        before, after = parse_map(old), parse_map(new)
        count = 0
        for key in sorted(before.keys() - after.keys()):
            self._run(f"del map {path} {key}")
            count += 1
        for key, value in sorted(after.items()):
            if key not in before:
                self._run(f"add map {path} {key} {value}")
            elif before[key] != value:
                self._run(f"set map {path} {key} {value}")
            else:
                continue
            count += 1
        return count

    def forget(self) -> None:
        """After a reload the new process has none of the draining servers; the old one
        finishes their connections on its own."""
        self.draining.clear()

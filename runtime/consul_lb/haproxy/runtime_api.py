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
    changed: tuple[Server, ...] = ()  # same name (Consul ID): new address, port, weight...
    previous: dict[str, Server] = dataclasses.field(default_factory=dict)  # of `changed`


def server_only_changes(old: LoadBalancer, new: LoadBalancer) -> list[ServerChange] | None:
    """The server changes between two load balancers, or None when the change is
    structural (services, tags, settings)."""

    def shape(b: Backend) -> Backend:
        # Hosts and path prefixes live in the routing maps (changed live too).
        return dataclasses.replace(b, servers=(), hosts=(), path=None)

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
        changes.append(
            ServerChange(
                after,
                tuple(s for s in after.servers if s.name not in old_by_name),
                tuple(s for s in before.servers if s.name not in new_by_name),
                tuple(s for s in after.servers if old_by_name.get(s.name, s) != s),
                {
                    s.name: old_by_name[s.name]
                    for s in after.servers
                    if old_by_name.get(s.name, s) != s
                },
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

    def _run(self, command: str, success: tuple[str, ...] = (), exact: bool = False) -> None:
        """One command; HAProxy answers nothing on success, except for the commands whose
        success answers start as ``success`` says (with ``exact``: are exactly one of
        them, up to a final period)."""
        answer = self.admin(command).strip()
        self.commands += command.count("; ") + 1
        if exact:
            ok = answer.rstrip(".") in {s.rstrip(".") for s in success}
        else:
            ok = answer.startswith(success) if success else not answer
        if not ok:
            raise RuntimeApiError(f"{command!r}: {answer or 'no answer'}")

    def _change(self, backend: str, old: Server | None, server: Server) -> None:
        """Make a running server what ``server`` says (address, port, weight, maxconn)."""
        name = f"{backend}/{server.name}"
        if old is None or (old.address, old.port) != (server.address, server.port):
            # Open connections stay with the old address; new ones use the new one.
            self._run(
                f"set server {name} addr {server.address} port {server.port}",
                success=("IP changed", "port changed", "nothing changed", "no need to change"),
            )
        if old is None or old.weight != server.weight:
            self._run(f"set server {name} weight {server.weight}")
        if old is None or old.maxconn != server.maxconn:
            # 0: no limit (what a server line without maxconn means).
            self._run(f"set maxconn server {name} {server.maxconn or 0}")

    def apply(self, changes: list[ServerChange]) -> tuple[int, int, int]:
        """Apply the changes; (servers added, servers changed (address, port, weight or
        maxconn), servers put to drain).

        Arrivals go in before departures drain: a batch that replaces every server of a
        backend (one instance leaves as another arrives) never leaves it with none.
        """
        added = changed = drained = 0
        for change in changes:
            be = change.backend.name
            for server in change.changed:
                self._change(be, change.previous.get(server.name), server)
                changed += 1
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
        return added, changed, drained

    def _add(self, backend: Backend, server: Server) -> None:
        be = backend.name
        pending = self.draining.pop((be, server.name), None)
        if pending is not None:
            # Back before its drain finished: the same server, ready again.
            if pending.server != server:
                self._change(be, pending.server, server)
            self._run(f"set server {be}/{server.name} state ready")
            return
        commands = [
            f"add server {be}/{server.name} "
            f"{server_address(server.address)}:{server.port} "
            f"{server_options(server, self.checks, True, self.server_tls if backend.tls else '')}"
        ]
        if backend.sticky:
            # A server added at run time gets no dynamic cookie of its own; enabling
            # dynamic cookies again computes one for every server of the backend.
            commands.append(f"enable dynamic-cookie backend {be}")
        if self.checks:
            commands.append(f"enable health {be}/{server.name}")
        commands.append(f"set server {be}/{server.name} state ready")
        # One connection for all of them (HAProxy's CLI runs ";"-separated commands in
        # order; none of ours contains a ";"): only the first answers anything.
        self._run("; ".join(commands), success=("New server registered",), exact=True)

    def sweep(self) -> int:
        """Delete drained servers that have no connection left, or whose drain timed out;
        returns how many were deleted."""
        if not self.draining:
            return 0
        sessions = self.current_sessions({be for be, _ in self.draining})
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

    def current_sessions(self, backends: set[str]) -> dict[tuple[str, str], int]:
        """Open sessions per (backend, server) of these backends, from ``show stat``
        (asked backend by backend: the whole table of thousands of servers costs tens of
        MiB to parse, every half second while anything drains)."""
        out: dict[tuple[str, str], int] = {}
        for be in sorted(backends):
            text = self.admin(f"show stat {be} 4 -1").lstrip("# ")
            self.commands += 1
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

    def replace_map(self, path: str, new: str) -> int:
        """Replace every entry of the map HAProxy loaded from ``path`` at once, in the
        order of ``new`` (HAProxy's ``prepare map``/``commit map``: requests see the old
        map or the new one; map_beg and map_end match in order); returns the commands."""
        answer = self.admin(f"prepare map {path}").strip()
        self.commands += 1
        version = answer.rpartition(" ")[2]
        if not answer.startswith("New version created") or not version.isdigit():
            raise RuntimeApiError(f"prepare map {path}: {answer or 'no answer'}")
        count = 1
        for key, value in parse_map(new).items():
            self._run(f"add map @{version} {path} {key} {value}")
            count += 1
        self._run(f"commit map @{version} {path}")
        return count + 1

    def forget(self) -> None:
        """After a reload the new process has none of the draining servers; the old one
        finishes their connections on its own."""
        self.draining.clear()

"""What Consul's catalog says changed, and where, from two blocking queries:

- ``/v1/catalog/services`` wakes on every change of Consul's services table (an instance
  registered, deregistered, re-registered) and on nothing else. Its tags name services
  that appear, go, or change tags; for the rest, one read of ``/v1/internal/ui/services``
  (what Consul's own UI lists: per service its instance count, nodes and check counts)
  compared with the previous one names the services whose instances changed;
- ``/v1/health/state/any?filter=Status != "passing"`` wakes on every check change and
  lists the checks that do not pass; compared with the previous list it names the
  services (or, for node checks, the nodes) whose health changed, even when two
  opposite flips leave a service's check counts as they were.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consul_lb.consul.catalog import Service

UI_SERVICES = "/v1/internal/ui/services"
CATALOG_SERVICES = "/v1/catalog/services"
CHECKS = "/v1/health/state/any"
NOT_PASSING = 'Status != "passing"'
# Names Consul accepts but that would need escaping in a URL path are never watched:
# the model skips them anyway (they are not valid host names).
WATCHABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}\Z")
# (node, check ID) -> (service name, status) of each check that does not pass.
FailingChecks = dict[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Summary:
    """What the services query says of one service; equal summaries, same service
    (except for what no summary shows: ports, addresses, weights)."""

    tags: tuple[str, ...]
    instances: int = -1  # -1: not known (the /v1/catalog/services fallback)
    nodes: tuple[str, ...] = ()
    checks: tuple[int, int, int] = (0, 0, 0)  # passing, warning, critical


def summaries(data: Any, ui: bool) -> dict[str, Summary]:
    """Summaries from ``/v1/internal/ui/services`` (a list) or ``/v1/catalog/services``
    (name -> tags)."""
    if not ui:
        return {
            str(n): Summary(tuple(sorted({str(t) for t in tags or ()}))) for n, tags in data.items()
        }
    found: dict[str, Summary] = {}
    for entry in data or ():
        found[str(entry.get("Name", ""))] = Summary(
            tuple(sorted({str(t) for t in entry.get("Tags") or ()})),
            int(entry.get("InstanceCount") or 0),
            tuple(sorted(str(n) for n in entry.get("Nodes") or ())),
            (
                int(entry.get("ChecksPassing") or 0),
                int(entry.get("ChecksWarning") or 0),
                int(entry.get("ChecksCritical") or 0),
            ),
        )
    return found


def failing_checks(data: Any) -> FailingChecks:
    """(node, check ID) -> (service name, status) for each check that does not pass; a
    node check has no service name."""
    return {
        (str(c.get("Node", "")), str(c.get("CheckID", ""))): (
            str(c.get("ServiceName") or ""),
            str(c.get("Status", "")),
        )
        for c in data or ()
    }


def services_affected(
    old: FailingChecks, found: FailingChecks, services: Iterable[Service]
) -> set[str]:
    """The services whose health changed from ``old`` to ``found``: a service check's own
    service; for a node check, every service with an instance on that node."""
    keys = {k for k in found.keys() | old.keys() if found.get(k) != old.get(k)}
    affected: set[str] = set()
    for node, check_id in keys:
        service, _ = found.get((node, check_id)) or old[(node, check_id)]
        if service:
            affected.add(service)
        else:  # a node check: every service with an instance on that node
            affected |= {s.name for s in services if any(i.node == node for i in s.instances)}
    return affected

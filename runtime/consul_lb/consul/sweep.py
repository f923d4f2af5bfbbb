"""Reading every watched service at once (on start, on the periodic resync, after a
change nothing named), with as few requests as the catalog allows.

Reading ``/v1/health/service/<name>`` for each of 5,000 services takes 5,000 requests.
The same instances are listed by node: ``/v1/catalog/nodes`` names the nodes,
``/v1/catalog/node/<node>`` lists a node's services (address, port, tags, weights,
CreateIndex), and the checks that do not pass (``/v1/health/state/any?filter=...``)
give each instance its status. When a catalog has fewer nodes than watched services (the
usual case: many services per node), that is nodes + 2 requests; otherwise the
per-service reads are cheaper and the caller uses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any
from urllib.parse import quote

from consul_lb.consul.catalog import Instance
from consul_lb.consul.client import ConsulClient

NODES = "/v1/catalog/nodes"
CHECKS = "/v1/health/state/any"
NOT_PASSING = 'Status != "passing"'


def node_count(client: ConsulClient) -> tuple[list[dict[str, Any]], int]:
    """The catalog's nodes (Consul's node objects) and how many."""
    nodes = list(client.get(NODES).data or ())
    return nodes, len(nodes)


def read_by_node(
    client: ConsulClient,
    nodes: list[dict[str, Any]],
    names: Iterable[str],
    pool: Executor,
) -> dict[str, tuple[Instance, ...]]:
    """Every instance of the services ``names``, read node by node; raises ConsulError
    (or whatever the client raises) when a read fails."""
    wanted = set(names)
    failing: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for check in client.get(CHECKS, {"filter": NOT_PASSING}).data or ():
        key = (str(check.get("Node", "")), str(check.get("ServiceID") or ""))
        failing.setdefault(key, []).append(check)

    def read(node: dict[str, Any]) -> list[tuple[str, Instance]]:
        name = str(node.get("Node", ""))
        data = client.get(f"/v1/catalog/node/{quote(name, safe='')}").data or {}
        found = []
        for svc in (data.get("Services") or {}).values():
            service = str(svc.get("Service", ""))
            if service not in wanted:
                continue
            # The checks of the instance and of its node, as /v1/health/service gives.
            checks = failing.get((name, str(svc.get("ID", ""))), []) + failing.get((name, ""), [])
            entry = {"Node": data.get("Node") or node, "Service": svc, "Checks": checks}
            found.append((service, Instance.from_health_entry(entry)))
        return found

    instances: dict[str, list[Instance]] = {name: [] for name in wanted}
    for found in pool.map(read, nodes):
        for service, instance in found:
            instances[service].append(instance)
    return {name: tuple(sorted(found)) for name, found in instances.items()}

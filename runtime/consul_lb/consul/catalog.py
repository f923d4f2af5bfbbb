"""The catalog snapshot handed from the watcher to the model: plain, sorted, immutable."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
# Worst first: an instance is as healthy as its worst check (Consul's own rule for
# ``?passing``: every check of the instance and of its node must pass).
_SEVERITY = {PASSING: 0, WARNING: 1, CRITICAL: 2}


def worst(statuses: Iterable[str]) -> str:
    """The aggregate status of a set of checks; an unknown status counts as critical."""
    level = max((_SEVERITY.get(s, 2) for s in statuses), default=0)
    return (PASSING, WARNING, CRITICAL)[level]


@dataclass(frozen=True, order=True, slots=True)
class Instance:
    """One instance of a service (a Consul service entry on a node) with the aggregate
    status of its checks and of its node's checks."""

    node: str
    service_id: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    status: str = PASSING
    # Consul's ``Weights`` of the registration (Consul's defaults: 1 and 1).
    weight_passing: int = 1
    weight_warning: int = 1
    # Raft index at which the instance was registered: "most recently registered".
    create_index: int = 0

    @classmethod
    def from_health_entry(cls, entry: Mapping[str, Any]) -> Instance:
        """From one element of ``/v1/health/service/<name>``. The service address falls
        back to the node's address, as Consul's own DNS interface does."""
        node = entry.get("Node") or {}
        svc = entry.get("Service") or {}
        weights = svc.get("Weights") or {}
        checks = entry.get("Checks") or ()
        return cls(
            node=str(node.get("Node", "")),
            service_id=str(svc.get("ID", "")),
            address=str(svc.get("Address") or node.get("Address") or ""),
            port=_int(svc.get("Port")),
            tags=tuple(sorted({str(t) for t in svc.get("Tags") or ()})),
            status=worst(str(c.get("Status", "")) for c in checks),
            weight_passing=_int(weights.get("Passing"), 1),
            weight_warning=_int(weights.get("Warning"), 1),
            create_index=_int(svc.get("CreateIndex")),
        )


def _int(raw: Any, default: int = 0) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    tags: tuple[str, ...]  # union over the instances (what /v1/catalog/services says)
    instances: tuple[Instance, ...]  # every instance, whatever its status

    @property
    def passing(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.status == PASSING)


@dataclass(frozen=True)
class Catalog:
    """Services by name, sorted; each with its tags and its instances."""

    services: tuple[Service, ...] = ()
    _by_name: dict[str, Service] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update((s.name, s) for s in self.services)

    @classmethod
    def build(
        cls, tags: Mapping[str, Iterable[str]], instances: Mapping[str, Iterable[Instance]]
    ) -> Catalog:
        return cls(
            tuple(
                Service(
                    name, tuple(sorted(set(tags[name]))), tuple(sorted(instances.get(name, ())))
                )
                for name in sorted(tags)
            )
        )

    def get(self, name: str) -> Service | None:
        return self._by_name.get(name)

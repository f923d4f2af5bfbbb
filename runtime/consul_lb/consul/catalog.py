"""The catalog snapshot handed from the watcher to the model: plain, sorted, immutable."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Instance:
    """One passing instance of a service (a Consul service entry on a node)."""

    node: str
    service_id: str
    address: str
    port: int
    tags: tuple[str, ...] = ()

    @classmethod
    def from_health_entry(cls, entry: Mapping[str, Any]) -> Instance:
        """From one element of ``/v1/health/service/<name>``; the service address falls
        back to the node's address, as Consul's own DNS interface does."""
        node = entry.get("Node") or {}
        svc = entry.get("Service") or {}
        return cls(
            node=str(node.get("Node", "")),
            service_id=str(svc.get("ID", "")),
            address=str(svc.get("Address") or node.get("Address") or ""),
            port=int(svc.get("Port") or 0),
            tags=tuple(sorted(str(t) for t in svc.get("Tags") or ())),
        )


@dataclass(frozen=True)
class Service:
    name: str
    tags: tuple[str, ...]
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class Catalog:
    """Services by name, each with its tags (union over instances) and passing instances."""

    services: tuple[Service, ...] = ()

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
        return next((s for s in self.services if s.name == name), None)

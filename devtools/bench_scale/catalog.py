"""The bench's services: their names, ports and tags, as registered in Consul and as the
catalog the watcher would hand over for the in-process render."""

from __future__ import annotations

from consul_lb.consul.catalog import Catalog, Instance, Service

INSTANCES = 5
DOMAIN = "bench.local"
ENABLE = "HAPROXY.ENABLE=true"
PROBE = "probe"  # the service of the no-reload rounds


def service_name(i: int) -> str:
    return PROBE if i == 0 else f"svc-{i:05d}"


def port_of(i: int, j: int) -> int:
    return 10000 + (i * INSTANCES + j) % 50000


def expected_servers(services: int) -> int:
    return (services - 1) * INSTANCES + 1  # the probe has one instance


def synthetic_catalog(services: int, probe_address: str = "10.0.0.1") -> Catalog:
    """The catalog the bench registers in Consul, as the watcher would hand it over."""
    entries = [
        Service(
            PROBE, (ENABLE,), (Instance("node-0", f"{PROBE}-a", probe_address, 8000, (ENABLE,)),)
        )
    ]
    for i in range(1, services):
        name = service_name(i)
        entries.append(
            Service(
                name,
                (ENABLE,),
                tuple(
                    Instance(f"node-{j}", f"{name}-{j}", "127.0.0.1", port_of(i, j), (ENABLE,))
                    for j in range(INSTANCES)
                ),
            )
        )
    return Catalog(tuple(sorted(entries, key=lambda s: s.name)))


def with_one_more_instance(catalog: Catalog, name: str, k: int) -> Catalog:
    return Catalog(
        tuple(
            s
            if s.name != name
            else Service(
                s.name,
                s.tags,
                (*s.instances, Instance("node-0", f"{name}-x{k}", "127.0.0.1", 9, (ENABLE,))),
            )
            for s in catalog.services
        )
    )

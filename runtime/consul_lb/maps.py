"""The map files the http frontend routes with (HAProxy's map format: "key value" lines).

A request's Host header (lower-cased, without :port) is looked up in four steps, each a
map, so that routing costs the same with 10 services or 10,000 and every change of
hosts, aliases and paths is a map change that the runtime API applies without reload:

1. ``hosts.map``: an exact host -> its site (the host itself), in both its plain and
   absolute form (a trailing dot, RFC 1034 3.1);
2. ``wildcards.map`` (``map_end``) when (1) finds nothing: a suffix ``.example.com`` ->
   the site ``*.example.com``; longest suffix first;
3. ``paths.map`` (``map_beg``): ``<site><path>/`` -> the backend of the longest path
   prefix taken on that site (the trailing ``/`` keeps ``/api`` from matching ``/apix``);
4. ``sites.map``: the site -> the backend that takes the rest of its paths.

HAProxy matches ``map_end`` and ``map_beg`` in file order, so those two files are sorted
longest key first and replaced as a whole (``prepare map``/``commit map``) when they
change; the others are changed entry by entry (``add``/``set``/``del map``).
"""

from __future__ import annotations

from consul_lb.model import LoadBalancer

HOSTS_MAP = "hosts.map"
WILDCARDS_MAP = "wildcards.map"
PATHS_MAP = "paths.map"
SITES_MAP = "sites.map"
# Why the health URI fails, when it does: "<key> 1" lines (see the stats frontend).
HEALTH_MAP = "health.map"
WAITING = "waiting"  # no complete read of Consul yet
DRAINING = "draining"  # SIGTERM: stopping
ROUTING_MAPS = (HOSTS_MAP, WILDCARDS_MAP, PATHS_MAP, SITES_MAP)
# Matched in file order by HAProxy: replaced as a whole.
ORDERED_MAPS = frozenset({WILDCARDS_MAP, PATHS_MAP})


def _lines(entries: list[tuple[str, str]], longest_first: bool = False) -> str:
    if longest_first:
        entries = sorted(set(entries), key=lambda kv: (-len(kv[0]), kv[0]))
    else:
        entries = sorted(set(entries))
    return "".join(f"{key} {value}\n" for key, value in entries)


def routing_maps(lb: LoadBalancer) -> dict[str, str]:
    """The four routing maps for the http backends of ``lb``."""
    hosts: list[tuple[str, str]] = []
    wildcards: list[tuple[str, str]] = []
    paths: list[tuple[str, str]] = []
    sites: list[tuple[str, str]] = []
    for b in lb.http_backends:
        for site in b.hosts:
            if site.startswith("*."):
                suffix = site[1:]  # ".example.com"
                wildcards += [(suffix, site), (f"{suffix}.", site)]
            else:
                hosts += [(site, site), (f"{site}.", site)]
            if b.path is None:
                sites.append((site, b.name))
            else:
                paths.append((f"{site}{b.path}/", b.name))
    return {
        HOSTS_MAP: _lines(hosts),
        WILDCARDS_MAP: _lines(wildcards, longest_first=True),
        PATHS_MAP: _lines(paths, longest_first=True),
        SITES_MAP: _lines(sites),
    }

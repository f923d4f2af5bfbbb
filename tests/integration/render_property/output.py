"""Check 2, the rest of the files: the routing maps hold exactly the published routes,
requests looked up through them as HAProxy does reach the backend the README names, no
hostile string appears anywhere, and the log lines of skips and left-out instances."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple, cast

from consul_lb import model
from consul_lb.haproxy.limits import Limits
from consul_lb.render import HaproxyFiles

from tests.integration.render_property.scenario import DOMAIN, ENVS, MARK, Route, Scenario
from tests.integration.render_property.sections import check_dynamic_sections, parse_sections


def printable_ascii(text: str) -> bool:
    return re.fullmatch(r"[ -~\n]*", text) is not None


def hostile_strings(scenario: Scenario) -> Iterator[str]:
    for name, found in scenario.services.items():
        yield from [name] if MARK in name else []
        for i in found:
            yield from (t for t in (i.node, i.service_id, i.address, *i.tags) if MARK in t)


ROUTING_MAPS = ("hosts.map", "wildcards.map", "paths.map", "sites.map")
# README (Environment): HAPROXY_STICKY_KEY, 8..128 characters; one word in haproxy.cfg.
KEY = re.compile(r"[!$-&(-\[\]-~]{8,128}")


def map_entries(text: str) -> list[tuple[str, str]]:
    assert text == "" or text.endswith("\n"), text[-80:]
    entries = [cast(tuple[str, str], tuple(ln.split(" "))) for ln in text.splitlines()]
    assert all(len(e) == 2 and all(e) for e in entries), text[:400]
    return entries


def check_maps(lb: model.LoadBalancer, maps: Mapping[str, str]) -> int:
    """The routing maps hold the published routes and nothing else (maps.py: hosts in
    both forms; wildcards as suffixes and paths as ``<site><path>/``, longest key first),
    and requests looked up through them as the http frontend does reach the backend the
    README's rules name. Returns how many requests were looked up."""
    want: dict[str, set[tuple[str, str]]] = {name: set() for name in ROUTING_MAPS}
    for b in lb.http_backends:
        for site in b.hosts:
            if site.startswith("*."):
                want["wildcards.map"] |= {(site[1:], site), (f"{site[1:]}.", site)}
            else:
                want["hosts.map"] |= {(site, site), (f"{site}.", site)}
            if b.path is None:
                want["sites.map"].add((site, b.name))
            else:
                want["paths.map"].add((f"{site}{b.path}/", b.name))
    entries = {name: map_entries(maps[name]) for name in ROUTING_MAPS}
    for name in ROUTING_MAPS:
        keys = [k for k, _ in entries[name]]
        assert len(keys) == len(set(keys)), f"{name}: a key twice\n{maps[name][:2000]}"
        assert set(entries[name]) == want[name], f"{name}: {maps[name][:2000]}"
        if name in ("wildcards.map", "paths.map"):  # matched in file order
            assert [len(k) for k in keys] == sorted(map(len, keys), reverse=True), name
    routes = {(h, b.path): b.name for b in lb.http_backends for h in b.hosts}
    hosts = sorted({h for h, _ in routes})
    paths = {"/", "/x"}
    for p in sorted({p for _, p in routes if p}):
        paths |= {p, f"{p}/", f"{p}/deeper/x", f"{p}x", p.upper(), p.rsplit("/", 1)[0] or "/"}
    headers = {"unknown.invalid", f"nothing.{DOMAIN}"}
    for h in hosts:
        if h.startswith("*."):
            headers |= {f"x{h[1:]}", f"a.b{h[1:]}", f"Z{h[1:]}.".upper(), h[2:]}
        else:
            headers |= {h, f"{h.upper()}.", f"{h}:8080"}
    tables = Tables(
        dict(entries["hosts.map"]),
        entries["wildcards.map"],
        entries["paths.map"],
        dict(entries["sites.map"]),
    )
    looked_up = 0
    for header in sorted(headers):
        for path in sorted(paths):
            got = lookup(tables, header, path)
            acceptable = readme_route(routes, header, path)
            assert got in acceptable, f"Host {header!r} path {path!r}: {got}, not {acceptable}"
            looked_up += 1
    return looked_up


class Tables(NamedTuple):
    """The routing maps: exact ones as dicts, ordered ones as their entries."""

    hosts: dict[str, str]
    wildcards: list[tuple[str, str]]
    paths: list[tuple[str, str]]
    sites: dict[str, str]


def lookup(tables: Tables, header: str, path: str) -> str | None:
    """The http frontend's lookups (templates/haproxy.cfg.j2, maps.py): the Host header
    lower-cased without its :port; ``map`` exact, ``map_end`` and ``map_beg`` the first
    entry in file order that matches."""
    host = header.lower().split(":")[0]
    site = tables.hosts.get(host)
    if site is None:
        site = next((v for k, v in tables.wildcards if host.endswith(k)), None)
    if site is None:
        return None
    key = f"{site}{path}/"
    found = next((v for k, v in tables.paths if key.startswith(k)), None)
    return found if found is not None else tables.sites.get(site)


def readme_route(routes: Mapping[Route, str], header: str, path: str) -> set[str | None]:
    """The backends the README lets a request reach: the Host lower-cased, without its
    :port, its absolute form the same; an exact host wins over a wildcard (any depth),
    the longest wildcard over a shorter one; on that host the longest path prefix (/api
    takes /api and /api/..., not /apix), else the service without a path. Whether a host
    whose routes do not take the path falls back to a wildcard's, the README does not
    say: both readings."""
    host = header.lower().split(":")[0].removesuffix(".")
    sites = {h for h, _ in routes}
    chain = [host] if host in sites and not host.startswith("*.") else []
    chain += sorted(
        (s for s in sites if s.startswith("*.") and host.endswith(s[1:])), key=len, reverse=True
    )

    def on(site: str) -> str | None:
        prefixes = [
            p for s, p in routes if s == site and p and (path == p or path.startswith(f"{p}/"))
        ]
        return routes[site, max(prefixes, key=len)] if prefixes else routes.get((site, None))

    answers = [on(site) for site in chain]
    return {answers[0] if answers else None, next((a for a in answers if a), None)}


def check_output(
    scenario: Scenario,
    lb: model.LoadBalancer,
    limits: Limits,
    files: HaproxyFiles,
    fixed: list[tuple[str, list[str]]],
    literals: Mapping[str, set[str]],
    derived_keys: dict[str, str],
    serving: bool = False,
) -> int:
    """Returns how many requests were looked up through the maps."""
    texts = files.files().values()
    assert all(printable_ascii(text) and MARK not in text for text in texts)
    for hostile_text in hostile_strings(scenario):
        assert not any(hostile_text in t for t in texts), f"hostile {hostile_text!r} in the output"
    preamble, sections = parse_sections(files.config)
    assert preamble == [
        "# haproxy.cfg rendered by consul-lb from the Consul catalog.",
        "# Do not edit: it is rewritten on every catalog change.",
        f"# Published: {len(lb.backends)} service(s); skipped: {len(lb.skipped)}.",
        "",
    ]
    assert sections[: len(fixed)] == fixed, "the fixed sections changed with the catalog"
    # README: HAPROXY_STICKY_KEY, else one derived from HAPROXY_DOM (the same each time).
    env = ENVS[scenario.env]
    keys = set(re.findall(r"^    dynamic-cookie-key (.*)$", files.config, re.MULTILINE))
    if keys and not env.sticky_key:
        derived_keys.setdefault(DOMAIN, min(keys))
    key = env.sticky_key or derived_keys.get(DOMAIN, "")
    assert not keys or KEY.fullmatch(key), f"sticky key {key!r}"
    check_dynamic_sections(sections[len(fixed) :], lb, limits, literals, key, serving)
    assert set(files.maps) == {*ROUTING_MAPS, "health.map"}, sorted(files.maps)
    assert files.health_map == ""  # not waiting for Consul, not draining
    for b in lb.backends:
        assert re.fullmatch(rf"[a-z0-9-]{{1,63}}\.{re.escape(DOMAIN)}", b.name, re.ASCII)
    return check_maps(lb, files.maps)


def check_log_lines(lb: model.LoadBalancer, problems: Sequence[str]) -> None:
    """Skips and left-out instances are logged as one line each (the applier's format):
    hostile names and tags must not break a line or carry control characters."""
    for s in lb.skipped:
        line = f"skipping service {s.service!r}: {s.reason}"
        assert line.isprintable(), line
    for p in problems:
        assert f"leaving out {p}".isprintable(), p

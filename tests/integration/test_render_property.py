"""Hostile catalogs through the model and the renderer, every result checked with the
HAProxy of the project's image.

Tags are read per instance (README, "Service tags"), so each generated instance carries
its own: instances of one service that disagree on protocol, balance or frontend port
(a rolling deploy), instances without ``HAPROXY.ENABLE=true``, each instance with its own
``HAPROXY.BACKEND.MAXCONN`` or none, the TLS tags (``HAPROXY.FRONTEND.REDIRECT_HTTPS``,
``HAPROXY.FRONTEND.HSTS``, ``HAPROXY.BACKEND.TLS``, ``HAPROXY.FRONTEND.ACME``), the routing tags
(``HAPROXY.FRONTEND.HOSTS`` with wildcards and aliases other services want too,
``HAPROXY.FRONTEND.PATH``, ``HAPROXY.BACKEND.STRIP_PATH``, ``HAPROXY.BACKEND.STICKY``,
``HAPROXY.BACKEND.HEALTHCHECK.PATH``, ``HAPROXY.FRONTEND.ALLOW``, ``HAPROXY.GROUP``),
Consul's ``Weights`` (0, 1, up to thousands), instances that pass, warn or fail their
checks, each registered at its own Consul ``CreateIndex``; each example runs under one of
a few environments (``HAPROXY_GROUPS``, ``HAPROXY_HEALTH_WARNING``,
``HAPROXY_STICKY_KEY``), and some also say which tcp ports and routes the running load
balancer holds. Next to clean services, hostile ones: names that are not DNS labels, tag
values with whitespace, newlines, ``#``, quotes, backslashes, control and non-ASCII
characters or thousands of characters, unknown ``HAPROXY.*`` tags, duplicate and
conflicting tags, ports out of range, and instances with hostile addresses, IDs and
nodes. One example in four renders as with a certificate served (the https frontend
bound, the redirect rendered). Three things are checked for every example:

1. entitlement, against an oracle (render_property/) written from the README's contract
   rather than from runtime/consul_lb/model/ (it imports data types only): which services are
   published, skipped or ignored, the shape of each backend (from the most recently
   registered published instance, or while none is published the most recently
   registered one), the tcp ports (held ports stay with their holder, then the earliest
   registered service wins), the routes (a service's own host is its own, then held
   routes stay with their holder, then the earliest registered service wins), and exactly
   which instances become servers (their group published here, their status passing or
   warning as HAPROXY_HEALTH_WARNING says), each with its own maxconn and its Consul
   weight scaled as the README says;
2. the rendered text says what the model says and nothing else: every section and line
   is one of the templates' shapes with the model's values (the lines of allow lists,
   HTTP checks, sticky cookies and stripped paths only where the backend has the option),
   the fixed sections are byte-identical to those of an empty catalog, the renderer's
   per-backend cache changes nothing (a fresh renderer gives the same bytes), the four
   routing maps hold exactly the published routes (hosts in both forms, wildcard
   suffixes and paths longest first), requests looked up through the maps as HAProxy
   does reach the backend the README's routing rules name, and no hostile string (all of
   them carry the marker ``EVIL!``, which no valid value can contain) appears in any
   file;
3. ``haproxy -c`` of the image accepts the files (each distinct rendering once, run in
   parallel in one long-lived container while hypothesis generates the next examples,
   and collected at the end).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from consul_lb import model
from consul_lb.consul.catalog import WARNING, Catalog
from consul_lb.haproxy.limits import fit
from consul_lb.render import HaproxyFiles, Renderer
from consul_lb.tls.certs import TlsView
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools import images
from devtools.certs import Ca
from devtools.haproxy_check import CheckResult, HaproxyChecker
from tests.integration.conftest import image_names, require_images
from tests.integration.render_property.entitlement import check_entitlement
from tests.integration.render_property.examples import (
    ARGUABLE,
    EMPTY_LABEL_ADDRESS,
    INJECTED_TAGS,
    NONE_PASSING,
    PORT_CLASH,
    PORT_HELD,
    ROLLING_DEPLOY,
    ROUTES,
    ROUTES_HELD,
    WEIGHTS_SCALED,
)
from tests.integration.render_property.interpretations import HAPROXY_MAX_WEIGHT
from tests.integration.render_property.output import check_log_lines, check_output
from tests.integration.render_property.scenario import DOMAIN, ENVS, PATHS, SETTINGS, Env, Scenario
from tests.integration.render_property.sections import parse_sections, template_literals
from tests.integration.render_property.strategies import scenarios, to_catalog

EXAMPLES = 1000


# A certificate served: the https frontend's crt-list, in the live directory.
SERVING = TlsView(True, "default.pem", f"{PATHS['live']}/certs.list")
CERT = Ca().issue("default.example.com").bundle.decode()


def renderer_for(env: Env, serving: bool) -> Renderer:
    renderer = Renderer(env.settings, PATHS)
    if serving:
        renderer.tls = SERVING
    return renderer


def checkable(files: HaproxyFiles) -> dict[str, str]:
    """The files for haproxy -c. The checker copies plain files next to haproxy.cfg; a
    crt-list names its certificates by absolute path, so the check loads the certificate
    with ``crt`` instead (the crt-list itself is tested against HAProxy elsewhere)."""
    found = files.files()
    crt_list = f"crt-list {SERVING.crt_list}"
    if crt_list in found["haproxy.cfg"]:
        found["haproxy.cfg"] = found["haproxy.cfg"].replace(
            crt_list, f"crt {PATHS['live']}/default.pem"
        )
        found["default.pem"] = CERT
    return found


@pytest.fixture(scope="module")
def checker() -> Iterator[HaproxyChecker]:
    ref = image_names().ref("haproxy")
    require_images(images.client(), ref)
    with HaproxyChecker(ref) as c:
        yield c


def test_hostile_catalogs_render_entitled_configs_that_haproxy_accepts(
    checker: HaproxyChecker,
) -> None:
    # The image's own open-file limit: the global maxconn is fitted to it at run time.
    # One example in four renders as with too many servers to check (no `check`).
    limits = fit(SETTINGS.maxconn_global, SETTINGS.maxconn, nofile=checker.nofile)
    assert limits.checks
    unchecked = dataclasses.replace(limits, checks=False)
    # One renderer per environment for the whole run, as the runtime keeps one: its
    # per-backend cache must not change what it renders (checked against a fresh
    # renderer each time).
    renderers = {(e, s): renderer_for(ENVS[e], s) for e in range(len(ENVS)) for s in (False, True)}
    cache = model.Candidates()
    empty = model.LoadBalancer((), ())
    fixed = {
        (e, lim.checks, s): parse_sections(renderer_for(ENVS[e], s).render(empty, lim).config)[1]
        for lim in (limits, unchecked)
        for s in (False, True)
        for e in range(len(ENVS))
    }
    assert [head for head, _ in fixed[0, True, True]] == [
        "global",
        "defaults",
        "frontend stats",
        "frontend http",
        "frontend https",
        "backend consul_lb_stats",
        "backend consul_lb_runtime",
    ]
    assert [head for head, _ in fixed[0, True, False]] == [
        "global",
        "defaults",
        "frontend stats",
        "frontend http",
        "backend consul_lb_stats",
        "backend consul_lb_runtime",
    ]
    literals = template_literals(renderers[0, False].env)
    examples: list[tuple[Catalog, str, str]] = []  # catalog, config, digest of the files
    futures: dict[str, Future[CheckResult]] = {}
    totals: Counter[str] = Counter()
    derived_keys: dict[str, str] = {}
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # no .hypothesis directory in a tree shared with others
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenarios(), st.integers(0, 3))
    @example(INJECTED_TAGS, 1)
    @example(EMPTY_LABEL_ADDRESS, 1)
    @example(PORT_CLASH, 1)
    @example(PORT_HELD, 1)
    @example(ROLLING_DEPLOY, 1)
    @example(ROLLING_DEPLOY, 0)
    @example(NONE_PASSING, 1)
    @example(ROUTES, 1)
    @example(ROUTES_HELD, 3)
    @example(WEIGHTS_SCALED, 1)
    @example(dataclasses.replace(WEIGHTS_SCALED, env=3), 1)
    @example(dataclasses.replace(WEIGHTS_SCALED, env=0), 0)
    @example(ARGUABLE, 3)
    def run(scenario: Scenario, variant: int) -> None:
        lim = unchecked if variant == 0 else limits
        serving = variant == 3  # a certificate is served: the https frontend is bound
        env = ENVS[scenario.env]
        renderer = renderers[scenario.env, serving]
        catalog = to_catalog(scenario)
        lb, problems = model.build(catalog, env.settings, scenario.holders)
        # The runtime keeps a cache of services across builds: it changes nothing.
        assert model.build(catalog, env.settings, scenario.holders, cache) == (lb, problems)
        first, entitled = check_entitlement(scenario, lb, problems)
        files = renderer.render(lb, lim)
        assert renderer.render(lb, lim) == files, "a render from the cache differs"
        assert renderer_for(env, serving).render(lb, lim) == files, "the cache changed the text"
        fixed_sections = fixed[scenario.env, lim.checks, serving]
        totals["requests routed"] += check_output(
            scenario, lb, lim, files, fixed_sections, literals, derived_keys, serving
        )
        check_log_lines(lb, problems)
        digest = hashlib.sha256(repr(sorted(files.files().items())).encode()).hexdigest()
        if digest not in futures:
            futures[digest] = checker.submit(checkable(files), live=PATHS["live"])
        examples.append((catalog, files.config, digest))
        published = [e for n, e in entitled.items() if lb.backend(n) is not None]
        servers = [s for b in lb.backends for s in b.servers]
        totals["backends"] += len(lb.backends)
        totals["servers"] += len(servers)
        totals["maxconn servers"] += sum(s.maxconn is not None for s in servers)
        totals["weighted servers"] += sum(s.weight != 1 for s in servers)
        totals["scaled backends"] += sum(
            max((w for *_, w in e.published), default=0) > HAPROXY_MAX_WEIGHT for e in published
        )
        totals["warning servers"] += sum(
            i.status == WARNING for e in published for i, *_ in e.servers
        )
        totals["other groups"] += sum(e.outside for e in entitled.values())
        totals["disagreeing"] += sum(e.disagree for e in published)
        totals["shape kept"] += sum(e.shape_kept for e in published)
        totals["held ports"] += sum(lb.ports.get(p) == n for p, n in scenario.held.items())
        totals["held routes"] += sum(lb.routes.get(r) == n for r, n in scenario.routes.items())
        totals["routes lost"] += sum(e.lost for e in published)
        totals["aliases"] += sum(len(b.hosts) - 1 for b in lb.http_backends)
        totals["wildcards"] += sum(h.startswith("*.") for b in lb.http_backends for h in b.hosts)
        totals["paths"] += sum(b.path is not None for b in lb.http_backends)
        totals["stripped"] += sum(b.strip_path for b in lb.backends)
        totals["sticky"] += sum(b.sticky for b in lb.backends)
        totals["http checks"] += sum(b.healthcheck_path is not None for b in lb.backends)
        totals["allow lists"] += sum(bool(b.allow) for b in lb.backends)
        totals["skipped"] += len(lb.skipped)
        totals["tls backends"] += sum(b.tls for b in lb.backends)
        totals["redirects rendered"] += files.config.count("redirect code 308")
        totals["hsts"] += sum(b.hsts is not None for b in lb.backends)
        totals["left out"] += len(problems)
        totals["other reading"] += not first
        lines = [s.reason for s in lb.skipped] + problems
        totals["longest log line"] = max([totals["longest log line"], *map(len, lines)])

    run()
    generated = time.monotonic() - started
    verdicts = {digest: future.result(timeout=120) for digest, future in futures.items()}
    invalid = [(c, config, verdicts[d]) for c, config, d in examples if not verdicts[d].ok]
    warnings = Counter(
        re.sub(r"^.*?: config : ", "", w) for r in verdicts.values() for w in r.warnings
    )
    print(
        f"\nhaproxy -c ({checker.version}) on {len(examples)} rendered configs "
        f"({len(verdicts)} distinct): {len(invalid)} invalid; generated and checked in "
        f"{generated:.1f}s + {time.monotonic() - started - generated:.1f}s; {dict(totals)}"
    )
    for text, n in warnings.most_common(10):
        print(f"  haproxy warning x{n}: {text}")
    assert len(examples) >= EXAMPLES
    assert not invalid, f"haproxy -c rejected {len(invalid)} rendered configs:\n" + "\n".join(
        describe_rejections(invalid)
    )


def describe_rejections(invalid: list[tuple[Catalog, str, CheckResult]]) -> Iterator[str]:
    """One entry per kind of HAProxy error: the error, the offending line and the service
    it belongs to (long strings cut short)."""
    seen: set[str] = set()
    for catalog, config, result in invalid:
        alert = re.sub(r"\(\d+\)|/tmp/check-[^/]+/", "", result.alerts[0] if result.alerts else "")
        kind = re.sub(r"'[^'\n]*?'(?= :|$)|:\d+\]", "", alert)  # names, line numbers out
        if kind in seen:
            continue
        seen.add(kind)
        found = re.search(r"haproxy\.cfg:(\d+)", alert)
        lines = config.split("\n")[: int(found.group(1))] if found else []
        section = next((ln for ln in reversed(lines) if ln[:1].isalpha()), "")
        service = catalog.get(section.split(" ")[-1].removesuffix(f".{DOMAIN}"))
        shown = re.sub(r"(.)\1{20,}", lambda m: f"{m.group(1)}*{len(m.group(0))}", repr(service))
        offending = lines[-1].strip() if lines else ""
        yield f"- {alert}\n  line: {offending!r}\n  in {section!r} from {shown[:600]}"

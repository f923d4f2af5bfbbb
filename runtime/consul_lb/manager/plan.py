"""What a catalog gives, ready to install, and how the log describes it: the problems to
report, why the bisection left a service out, and the "applied:" summary."""

from __future__ import annotations

from dataclasses import dataclass

from consul_lb import model
from consul_lb.haproxy.limits import Limits
from consul_lb.render import HaproxyFiles
from consul_lb.settings import Settings

TEMPLATE_FAILS = "the template fails for it: "


@dataclass
class Plan:
    """What a catalog gives, ready to install: the load balancer, the problems to
    report, the files."""

    lb: model.LoadBalancer
    problems: list[str]
    files: HaproxyFiles
    limits: Limits


def reason(failure: str) -> str:
    """Why a service found by the bisection is left out."""
    if failure.startswith(TEMPLATE_FAILS):
        return failure
    return f"haproxy -c rejects its configuration: {failure}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(lb: model.LoadBalancer) -> str:
    """What a load balancer publishes, for the "applied:" log line."""
    servers = sum(len(b.servers) for b in lb.backends)
    return (
        f"{plural(len(lb.backends), 'service')}, {plural(servers, 'server')}, "
        f"{len(lb.skipped)} skipped"
    )


def warnings(plan: Plan, settings: Settings) -> list[str]:
    """The problems of ``plan`` to log: skipped services, left-out instances, and sticky
    sessions with a cookie key anyone can compute."""
    lines = [f"skipping service {s.service!r}: {s.reason}" for s in plan.lb.skipped]
    lines += [f"leaving out {p}" for p in plan.problems]
    if settings.sticky_key is None and any(b.sticky for b in plan.lb.backends):
        lines.append(
            "sticky sessions use a cookie key derived from HAPROXY_DOM, which anyone can "
            "compute: set HAPROXY_STICKY_KEY, the same on every load balancer of the fleet"
        )
    return lines

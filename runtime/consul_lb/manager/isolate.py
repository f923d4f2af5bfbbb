"""Find the services that make a configuration fail, by bisection.

When the new configuration cannot be rendered (an operator template that raises) or
``haproxy -c`` rejects it, the running configuration is known to be good. The services
that changed are split in halves and each half is tried on top of the good
configuration; halves that pass are cleared at once, halves that fail are split again.
Finding k culprits among n changed services takes about 2k·log2(n) trials instead of n.
(A failure that needs two services together is found as the first of them; the second
is then published.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from consul_lb.haproxy.files import Validation
from consul_lb.model import Backend, LoadBalancer

log = logging.getLogger("apply")


def changed_services(good: LoadBalancer | None, new: LoadBalancer) -> list[str]:
    """Services whose backend differs between ``good`` and ``new`` (added, changed or
    removed), sorted."""
    before = {b.service: b for b in good.backends} if good else {}
    after = {b.service: b for b in new.backends}
    return sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))


def with_changes(good: LoadBalancer | None, new: LoadBalancer, names: set[str]) -> LoadBalancer:
    """``good`` with the services in ``names`` as ``new`` has them."""
    backends: dict[str, Backend] = {b.service: b for b in good.backends} if good else {}
    for name in names:
        backends.pop(name, None)
        found = new.backend(name)
        if found is not None:
            backends[name] = found
    return LoadBalancer(tuple(backends[n] for n in sorted(backends)), ())


def culprits(
    good: LoadBalancer | None,
    new: LoadBalancer,
    trial: Callable[[LoadBalancer], Validation],
    failure: str,
) -> dict[str, str]:
    """Services of ``new`` that make ``trial`` fail on top of ``good``, each with the
    failure's message. ``trial`` renders and checks a load balancer; ``new`` as a whole
    is known to fail with ``failure``."""
    found: dict[str, str] = {}
    trials = 0

    def search(names: list[str], known: str | None = None) -> None:
        nonlocal trials
        if not names:
            return
        if known is None:
            trials += 1
            result = trial(with_changes(good, new, set(names)))
            if result.ok:
                return
            known = result.message
        if len(names) == 1:
            found[names[0]] = known
            return
        middle = len(names) // 2
        search(names[:middle])
        search(names[middle:])

    changed = changed_services(good, new)
    search(changed, failure)
    log.debug("bisection: %d trial(s) for %d changed service(s)", trials, len(changed))
    return found

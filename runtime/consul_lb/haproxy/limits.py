"""Fit HAProxy's connection limits to the open-file limit the host allows.

HAProxy needs about two descriptors per connection (client and server side) plus some
for listeners, checks and logs. With an explicit global ``maxconn`` that needs more than
the hard limit, HAProxy 3.0 refuses to start ("Cannot raise FD limit"). Many hosts and
container runtimes cap descriptors well below what the original default
(HAPROXY_MAXCONN_GLOBAL=50000) needs, so the limit is lowered to fit, and said once.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Descriptors kept aside for listeners, the admin socket and logs.
RESERVED_FDS = 1000
# Each server with a health check holds one more descriptor. Counted in steps, so that
# instances coming and going do not change the rendered maxconn (and force a reload).
SERVER_STEP = 1000
# Below this many connections, health checks give way (see fit()).
MIN_MAXCONN = 1000


@dataclass(frozen=True)
class Limits:
    maxconn_global: int
    maxconn: int
    nofile: int
    fitted: bool  # True when the asked-for values had to be lowered
    checks: bool = True  # False when HAProxy's own server checks do not fit

    def describe(self, asked_global: int) -> str:
        if not self.fitted:
            text = f"open-file limit {self.nofile} allows maxconn {asked_global}"
        else:
            text = (
                f"open-file limit {self.nofile} allows at most maxconn {self.maxconn_global}: "
                f"using it instead of HAPROXY_MAXCONN_GLOBAL={asked_global}"
            )
        if not self.checks:
            text += (
                "; too many servers to health-check each within that limit: HAProxy's "
                "server checks are off, Consul's checks still take failing instances out"
            )
        return text


def fit(maxconn_global: int, maxconn: int, nofile: int | None = None, servers: int = 0) -> Limits:
    """Largest global and per-frontend maxconn, at most as asked, that fit ``nofile``
    next to ``servers`` health-checked servers."""
    if nofile is None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = hard if hard != resource.RLIM_INFINITY else 1 << 20
    server_fds = -(-servers // SERVER_STEP) * SERVER_STEP  # rounded up to a step
    allowed = (nofile - RESERVED_FDS - server_fds) // 2
    checks = True
    if allowed < min(MIN_MAXCONN, maxconn_global):
        # With HAProxy checking every server, HAProxy would refuse to start (or take
        # almost no connection). Consul already publishes passing instances only, so
        # HAProxy's own checks are what gives way.
        checks = False
        allowed = (nofile - RESERVED_FDS) // 2
    fitted_global = max(1, min(maxconn_global, allowed))
    return Limits(
        maxconn_global=fitted_global,
        maxconn=min(maxconn, fitted_global),
        nofile=nofile,
        fitted=fitted_global < maxconn_global,
        checks=checks,
    )

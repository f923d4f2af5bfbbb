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


@dataclass(frozen=True)
class Limits:
    maxconn_global: int
    maxconn: int
    nofile: int
    fitted: bool  # True when the asked-for values had to be lowered

    def describe(self, asked_global: int) -> str:
        if not self.fitted:
            return f"open-file limit {self.nofile} allows maxconn {asked_global}"
        return (
            f"open-file limit {self.nofile} allows at most maxconn {self.maxconn_global}: "
            f"using it instead of HAPROXY_MAXCONN_GLOBAL={asked_global}"
        )


def fit(maxconn_global: int, maxconn: int, nofile: int | None = None, servers: int = 0) -> Limits:
    """Largest global and per-frontend maxconn, at most as asked, that fit ``nofile``
    next to ``servers`` health-checked servers."""
    if nofile is None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = hard if hard != resource.RLIM_INFINITY else 1 << 20
    server_fds = -(-servers // SERVER_STEP) * SERVER_STEP  # rounded up to a step
    allowed = max(1, (nofile - RESERVED_FDS - server_fds) // 2)
    fitted_global = min(maxconn_global, allowed)
    return Limits(
        maxconn_global=fitted_global,
        maxconn=min(maxconn, fitted_global),
        nofile=nofile,
        fitted=fitted_global < maxconn_global,
    )

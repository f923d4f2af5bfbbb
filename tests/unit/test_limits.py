"""Fitting HAProxy's connection limits to the open-file limit."""

from __future__ import annotations

import resource

import pytest
from consul_lb.haproxy.limits import RESERVED_FDS, Limits, fit


def test_fits_as_asked() -> None:
    limits = fit(50000, 10000, nofile=1_048_576)
    assert limits == Limits(maxconn_global=50000, maxconn=10000, nofile=1_048_576, fitted=False)
    assert limits.describe(50000) == "open-file limit 1048576 allows maxconn 50000"


def test_exactly_enough_descriptors_fits() -> None:
    nofile = 2 * 50000 + RESERVED_FDS
    assert fit(50000, 10000, nofile=nofile).fitted is False
    lowered = fit(50000, 10000, nofile=nofile - 2)
    assert (lowered.maxconn_global, lowered.fitted) == (49999, True)


def test_lowered_to_fit() -> None:
    limits = fit(50000, 10000, nofile=20000)
    assert limits == Limits(maxconn_global=9500, maxconn=9500, nofile=20000, fitted=True)
    assert limits.describe(50000) == (
        "open-file limit 20000 allows at most maxconn 9500: "
        "using it instead of HAPROXY_MAXCONN_GLOBAL=50000"
    )


def test_per_frontend_maxconn_is_capped_by_the_global() -> None:
    # Asked for more per frontend than globally: the global wins, even when nothing
    # had to be lowered for the descriptors.
    limits = fit(2000, 10000, nofile=1_048_576)
    assert (limits.maxconn_global, limits.maxconn, limits.fitted) == (2000, 2000, False)


def test_per_frontend_maxconn_below_the_fitted_global_is_kept() -> None:
    limits = fit(50000, 3000, nofile=20000)
    assert (limits.maxconn_global, limits.maxconn) == (9500, 3000)


@pytest.mark.parametrize("nofile", [0, 1, 1000, 1001])
def test_tiny_limits_still_allow_one_connection(nofile: int) -> None:
    limits = fit(50000, 10000, nofile=nofile)
    assert (limits.maxconn_global, limits.maxconn, limits.fitted) == (1, 1, True)


def test_default_reads_the_hard_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert fit(50000, 10000).nofile == expected


def test_health_checked_servers_take_descriptors_in_steps() -> None:
    # 20,000 descriptors, 1,000 kept aside, 5,000 servers: (20000 - 1000 - 5000) / 2.
    assert fit(50000, 10000, nofile=20000, servers=5000).maxconn_global == 7000
    # A few instances more or less leave the rendered limit where it was.
    assert fit(50000, 10000, nofile=20000, servers=4001) == fit(
        50000, 10000, nofile=20000, servers=4999
    )
    assert fit(50000, 10000, nofile=20000, servers=1).maxconn_global == 9000


def test_servers_that_cannot_all_be_checked_turn_haproxys_checks_off() -> None:
    fitted = fit(50000, 10000, nofile=20000, servers=25000)
    assert not fitted.checks
    assert fitted.maxconn_global == 9500  # as without servers: no descriptor per check
    assert "server checks are off" in fitted.describe(50000)
    assert fit(50000, 10000, nofile=20000, servers=5000).checks

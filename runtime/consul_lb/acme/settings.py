"""The ACME variables of the HAProxy image -> ``AcmeSettings``.

Kept apart from ``consul_lb.settings`` (which reads them through ``read``), as the TLS
variables are. ACME is off unless ``HAPROXY_ACME_DIRECTORY`` is set; the checks that need
the TLS settings too (a KV prefix to store certificates under) are in ``check``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consul_lb.durations import DurationError, parse_duration, parse_wait
from consul_lb.tls.settings import TlsSettings, kv_prefix, parse_variables, readable_file

# RFC 8555 wants HTTPS for the directory; the URL is only ever given to the acme library,
# but a closed pattern keeps log lines and state free of surprises.
DIRECTORY = re.compile(r"^https://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]{0,200})?\Z")
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+\Z")
DAY = 86400.0
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class AcmeSettings:
    directory: str | None = None  # HAPROXY_ACME_DIRECTORY; None: ACME off
    email: str | None = None  # HAPROXY_ACME_EMAIL: the account's contact
    ca_file: Path | None = None  # HAPROXY_ACME_CA_FILE: trust for a private ACME server
    # Renew this long before expiry (at the latest halfway through a certificate's life).
    renew_before: float = 30 * DAY
    # ACME's own state in Consul KV: account key, locks, challenges, order status.
    kv: str = "consul-lb/acme/"
    # A failed order is tried again after retry[0], doubling up to retry[1] (seconds).
    retry: tuple[float, float] = (300.0, 3600.0)

    @property
    def enabled(self) -> bool:
        return self.directory is not None


def _directory(raw: str) -> str:
    if not DIRECTORY.match(raw):
        raise ValueError(
            f"expected an ACME directory URL such as {LETS_ENCRYPT} (https), got {raw!r}"
        )
    return raw


def _email(raw: str) -> str:
    if not EMAIL.match(raw):
        raise ValueError(f"expected an e-mail address such as ops@example.com, got {raw!r}")
    return raw


def _renew_before(raw: str) -> float:
    try:
        seconds = parse_duration(raw)
    except DurationError as exc:
        raise ValueError(f"{exc} (720h is 30 days)") from None
    if seconds <= 0:
        raise ValueError(f"expected a duration above 0, got {raw!r}")
    return seconds


def _retry(raw: str) -> tuple[float, float]:
    try:
        low, high = parse_wait(raw)
    except DurationError as exc:
        raise ValueError(f"expected min:max such as 5m:1h ({exc})") from None
    if low < 1:
        raise ValueError(f"expected a first retry of at least 1s, got {raw!r}")
    return low, high


VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HAPROXY_ACME_DIRECTORY": ("directory", _directory),
    "HAPROXY_ACME_EMAIL": ("email", _email),
    "HAPROXY_ACME_CA_FILE": ("ca_file", readable_file),
    "HAPROXY_ACME_RENEW_BEFORE": ("renew_before", _renew_before),
    "HAPROXY_ACME_KV": ("kv", kv_prefix),
    "HAPROXY_ACME_RETRY": ("retry", _retry),
}


def read(env: Mapping[str, str]) -> tuple[AcmeSettings, list[str]]:
    """The ACME settings and one problem line per bad variable (naming it)."""
    values, errors = parse_variables(env, VARIABLES)
    return AcmeSettings(**values), errors


def check(acme: AcmeSettings, tls: TlsSettings) -> list[str]:
    """What ACME needs from the TLS settings: a KV prefix to store the certificates it
    obtains under (every load balancer loads them from there), apart from its own."""
    if not acme.enabled:
        return []
    if tls.cert_kv is None:
        return [
            "HAPROXY_ACME_DIRECTORY needs HAPROXY_TLS_CERT_KV: the certificates ACME "
            "obtains are stored under that Consul KV prefix, where every load balancer "
            "loads them (e.g. HAPROXY_TLS_CERT_KV=tls/certs)"
        ]
    if acme.kv.startswith(tls.cert_kv) or tls.cert_kv.startswith(acme.kv):
        return [
            f"HAPROXY_ACME_KV ({acme.kv}) and HAPROXY_TLS_CERT_KV ({tls.cert_kv}) must not "
            "contain one another: ACME's account key and locks are not certificates"
        ]
    return []

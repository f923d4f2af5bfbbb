"""What is wrong with the certificates, as log lines: each logged once when its problem
appears (again only after it went away and came back), not on every change."""

from __future__ import annotations

import logging
import time

from consul_lb.tls.certs import CertSet

log = logging.getLogger("tls")

EXPIRY_WARNING = 14 * 86400  # seconds: certificates closer to expiry are reported
SOURCES = {"dir": "HAPROXY_TLS_CERT_DIR", "kv": "HAPROXY_TLS_CERT_KV"}


def problems(certs: CertSet, wanted_default: str | None, now: float) -> list[tuple[str, str]]:
    """(what the problem is, the line that says it): the key stays the same while only
    the days left change."""
    lines = [
        (
            f"skip {b.source} {b.name} {b.reason}",
            f"skipping certificate {b.name!r} from {SOURCES.get(b.source, b.source)}: {b.reason}",
        )
        for b in certs.skipped
    ]
    for cert in certs.certs:
        left = cert.not_after - now
        if left >= EXPIRY_WARNING:
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert.not_after))
        names = ", ".join(cert.names)
        if left <= 0:
            line = f"certificate {cert.name!r} ({names}) expired at {when}; still served"
        else:
            line = (
                f"certificate {cert.name!r} ({names}) expires at {when}, in {left / 86400:.1f} days"
            )
        lines.append((f"expiry {cert.fingerprint} {left <= 0}", line))
    if wanted_default and certs.certs and certs.default != wanted_default:
        line = (
            f"HAPROXY_TLS_DEFAULT_CERT={wanted_default} is not available; the default "
            f"certificate is {certs.default!r}"
        )
        lines.append((line, line))
    return lines


class Once:
    """Logs each problem once while it lasts."""

    def __init__(self) -> None:
        self.reported: set[str] = set()

    def log(self, lines: list[tuple[str, str]]) -> None:
        for key, line in lines:
            if key not in self.reported:
                log.warning("%s", line)
        self.reported = {key for key, _ in lines}

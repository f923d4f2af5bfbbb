"""What the two sources hold -> the certificates to serve (pure, deterministic).

- Each bundle is parsed once per distinct content (``Parsed`` remembers).
- A name must be a plain file name (it becomes one in the runtime's certificate
  directory and a word of runtime-API commands); the directory wins over KV when both
  hold a name.
- A bundle that turns bad while its name is served keeps its previous version serving:
  a broken rotation does not take a site's certificate away. It is reported all the same.
- The default certificate (served without SNI, or when no name matches) is the one
  ``HAPROXY_TLS_DEFAULT_CERT`` names, else the first by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from consul_lb.model.tags import printable
from consul_lb.tls.bundle import BadBundle, Certificate, parse
from consul_lb.tls.settings import CERT_NAME

# What a source read: a name's bytes, or why they could not be read.
Raw = bytes | OSError


@dataclass(frozen=True)
class CertSet:
    certs: tuple[Certificate, ...]  # sorted by name
    skipped: tuple[BadBundle, ...]  # sorted by (source, name)
    default: str | None  # name of the default certificate; None when there is none

    @property
    def by_name(self) -> dict[str, Certificate]:
        return {c.name: c for c in self.certs}

    def ordered(self) -> list[Certificate]:
        """The default first (HAProxy serves the first of a crt-list by default), then
        the others by name."""
        return sorted(self.certs, key=lambda c: (c.name != self.default, c.name))


EMPTY = CertSet((), (), None)


class Parsed:
    """Parses each distinct (name, source, content) once."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, str, str], Certificate | BadBundle] = {}

    def get(self, name: str, source: str, data: bytes) -> Certificate | BadBundle:
        key = (name, source, hashlib.sha256(data).hexdigest())
        found = self.known.get(key)
        if found is None:
            found = self.known[key] = parse(name, source, data)
        return found

    def keep(self, live: set[tuple[str, str, str]]) -> None:
        for key in set(self.known) - live:
            del self.known[key]


def select(
    sources: Mapping[str, Mapping[str, Raw]],
    previous: CertSet,
    default_name: str | None,
    parsed: Parsed | None = None,
) -> CertSet:
    """The certificates to serve from ``sources`` ("dir" and "kv": name -> bytes),
    given what is served now (``previous``)."""
    parsed = parsed or Parsed()
    served: dict[str, Certificate] = {}
    skipped: list[BadBundle] = []
    before = previous.by_name
    live: set[tuple[str, str, str]] = set()
    for source in ("dir", "kv"):
        for name, raw in sorted(sources.get(source, {}).items()):
            found: Certificate | BadBundle
            if not CERT_NAME.match(name):
                found = BadBundle(
                    name,
                    source,
                    f"{printable(name)} is not a certificate name (letters, digits, '.', "
                    "'_', '-'; no sub-folders)",
                )
            elif source == "kv" and name in sources.get("dir", {}):
                found = BadBundle(name, source, "the directory has a certificate of this name")
            elif isinstance(raw, OSError):
                found = BadBundle(name, source, f"cannot be read: {raw.strerror or raw}")
            else:
                live.add((name, source, hashlib.sha256(raw).hexdigest()))
                found = parsed.get(name, source, raw)
            if isinstance(found, Certificate):
                served[name] = found
                continue
            old = before.get(name)
            if old is not None and old.source == source and CERT_NAME.match(name):
                served[name] = old
                found = BadBundle(name, source, f"{found.reason}; serving its previous version")
            skipped.append(found)
    parsed.keep(live)
    default = default_name if default_name in served else min(served, default=None)
    return CertSet(
        tuple(served[n] for n in sorted(served)),
        tuple(sorted(skipped, key=lambda b: (b.source, b.name))),
        default,
    )


def crt_list(certs: CertSet, directory: str) -> str:
    """HAProxy's crt-list: one certificate file per line, the default first. No SNI
    filter: HAProxy takes each certificate's names from the certificate itself."""
    return "".join(f"{directory}/{c.name}\n" for c in certs.ordered())


@dataclass(frozen=True)
class TlsView:
    """What haproxy.cfg says of TLS: whether the HTTPS frontend is bound (at least one
    certificate), which certificate is the default, and where the crt-list is. A change
    of any of these is a change of haproxy.cfg (a reload); everything else about
    certificates goes through the runtime API."""

    serving: bool = False
    default: str = ""
    crt_list: str = ""

    @classmethod
    def of(cls, certs: CertSet, crt_list_path: str) -> TlsView:
        if not certs.certs:
            return cls()
        return cls(True, certs.default or "", crt_list_path)

"""The TLS variables of the HAProxy image -> ``TlsSettings``.

Kept apart from ``consul_lb.settings`` (which reads them through ``read``) so that the TLS
feature is one package. Every value is checked against a closed pattern: each one ends up
in haproxy.cfg or in a runtime-API command, where whitespace, a newline or a ``#`` would
change what HAProxy reads.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Mozilla's "intermediate" configuration (server side TLS guidelines, version 5.7), for
# TLS 1.2; the DHE suites are left out so that HAProxy needs no Diffie-Hellman parameters.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# TLS 1.3 (the same guidelines: all three standard suites).
INTERMEDIATE_CIPHERSUITES = (
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
)
TLS_VERSIONS = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# An absolute path written into haproxy.cfg unquoted.
ABSOLUTE_PATH = re.compile(r"^/[A-Za-z0-9._/-]{0,200}\Z")
# A Consul KV prefix: path segments of safe characters, no empty or dot-only segment.
KV_PREFIX = re.compile(
    r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}){0,7}/?\Z"
)
# A certificate's name: its file name in the directory, or its key under the KV prefix.
# It becomes a file name in the runtime's certificate directory and a word of runtime-API
# commands and of the crt-list.
CERT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
OPENSSL_CIPHERS = re.compile(r"^[A-Za-z0-9_+!@=.-]{1,64}(:[A-Za-z0-9_+!@=.-]{1,64}){0,63}\Z")
TLS13_SUITES = re.compile(r"^TLS_[A-Z0-9_]{1,60}(:TLS_[A-Z0-9_]{1,60}){0,15}\Z")


@dataclass(frozen=True)
class TlsSettings:
    https_port: int = 8443
    cert_dir: Path | None = None  # HAPROXY_TLS_CERT_DIR
    cert_kv: str | None = None  # HAPROXY_TLS_CERT_KV, with a trailing "/"
    default_cert: str | None = None  # HAPROXY_TLS_DEFAULT_CERT: a certificate's name
    min_version: str = "TLSv1.2"
    ciphers: str = INTERMEDIATE_CIPHERS
    ciphersuites: str = INTERMEDIATE_CIPHERSUITES
    backend_ca_file: Path | None = None  # HAPROXY_BACKEND_CA_FILE
    trusted_proxies: tuple[str, ...] = ()  # networks whose X-Forwarded-* are kept

    @property
    def enabled(self) -> bool:
        """Whether any certificate source is configured."""
        return self.cert_dir is not None or self.cert_kv is not None


def _port(raw: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 65535:
        raise ValueError(f"expected a port 1..65535, got {raw!r}")
    return int(raw)


def _directory(raw: str) -> Path:
    if not ABSOLUTE_PATH.match(raw):
        raise ValueError(
            f"expected an absolute path of letters, digits, '.', '_', '-' and '/', got {raw!r}"
        )
    return Path(raw)


def readable_file(raw: str) -> Path:
    path = _directory(raw)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError(f"{raw!r} is not a readable file")
    return path


def kv_prefix(raw: str) -> str:
    value = raw.strip("/")
    if not KV_PREFIX.match(value) or any(part in {".", ".."} for part in value.split("/")):
        raise ValueError(
            f"expected a Consul KV prefix such as tls/certs (letters, digits, '.', '_', '-' "
            f"and '/'), got {raw!r}"
        )
    return value + "/"


def _cert_name(raw: str) -> str:
    if not CERT_NAME.match(raw):
        raise ValueError(
            f"expected a certificate's file name or KV key (letters, digits, '.', '_', '-'), "
            f"got {raw!r}"
        )
    return raw


def _version(raw: str) -> str:
    for version in TLS_VERSIONS:
        if raw.lower() == version.lower():
            return version
    raise ValueError(f"expected one of {', '.join(TLS_VERSIONS)}, got {raw!r}")


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not regex.match(raw):
            raise ValueError(f"expected {what}, got {raw!r}")
        return raw

    return parse


def _networks(raw: str) -> tuple[str, ...]:
    found: list[str] = []
    for part in raw.split(","):
        text = part.strip()
        if not text:
            continue
        try:
            # strict=False: 10.1.2.3/8 means the network 10.0.0.0/8, as HAProxy reads it.
            found.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(
                f"expected addresses or networks such as 10.0.0.0/8,192.0.2.7, got {part!r}"
            ) from None
    if not found:
        raise ValueError(f"expected at least one address or network, got {raw!r}")
    return tuple(found)


VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HAPROXY_HTTPS_PORT": ("https_port", _port),
    "HAPROXY_TLS_CERT_DIR": ("cert_dir", _directory),
    "HAPROXY_TLS_CERT_KV": ("cert_kv", kv_prefix),
    "HAPROXY_TLS_DEFAULT_CERT": ("default_cert", _cert_name),
    "HAPROXY_TLS_MIN_VERSION": ("min_version", _version),
    "HAPROXY_TLS_CIPHERS": ("ciphers", _pattern(OPENSSL_CIPHERS, "an OpenSSL cipher list")),
    "HAPROXY_TLS_CIPHERSUITES": (
        "ciphersuites",
        _pattern(TLS13_SUITES, "TLS 1.3 suites such as TLS_AES_128_GCM_SHA256"),
    ),
    "HAPROXY_BACKEND_CA_FILE": ("backend_ca_file", readable_file),
    "HAPROXY_TRUSTED_PROXIES": ("trusted_proxies", _networks),
}


def parse_variables(
    env: Mapping[str, str], variables: Mapping[str, tuple[str, Callable[[str], Any]]]
) -> tuple[dict[str, Any], list[str]]:
    """``variables`` (name -> (field, parser raising ValueError)) read from ``env``: the
    fields of those set and not blank, and one problem line per bad variable (naming it)."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, (field, parse) in variables.items():
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
    return values, errors


def read(env: Mapping[str, str]) -> tuple[TlsSettings, list[str]]:
    """The TLS settings and one problem line per bad variable (naming it)."""
    values, errors = parse_variables(env, VARIABLES)
    return TlsSettings(**values), errors

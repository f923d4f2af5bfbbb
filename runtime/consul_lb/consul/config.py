"""Consul connection from Consul's own CONSUL_HTTP_* variables.

``CONSUL_SERVER=host:port`` (the older image's variable) is accepted as an alias of
``CONSUL_HTTP_ADDR``. The token is kept out of ``repr`` and of every log line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

DEFAULT_ADDR = "127.0.0.1:8500"


class ConsulConfigError(ValueError):
    """A CONSUL_* variable is invalid; ``problems`` names each, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


TRUE = {"1", "t", "true", "yes", "on"}
FALSE = {"0", "f", "false", "no", "off"}


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    """A boolean variable; None when unset or empty. A typo is an error rather than a
    silent "false" (CONSUL_HTTP_SSL=ture must not quietly mean plain http)."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in TRUE | FALSE:
        return raw in TRUE
    raise ValueError(f"{name}: expected true or false, got {env[name]!r}")


def _readable(env: Mapping[str, str], name: str) -> str | None:
    """A file variable's path, checked now: a CA file that cannot be read is an error at
    start, not a watch that fails forever."""
    path = env.get(name, "").strip()
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    return path


@dataclass(frozen=True)
class ConsulConfig:
    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    cert: tuple[str, str] | None = None

    @property
    def address(self) -> str:
        """Where Consul is, for log lines (never includes the token)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsulConfig:
        """Read Consul's own variables; ConsulConfigError naming every bad one."""
        problems: list[str] = []

        def attempt(read: Callable[[], T]) -> T | None:
            try:
                return read()
            except ValueError as exc:
                problems.append(str(exc))
                return None

        # Errors name the variable the address came from.
        var = next((v for v in ("CONSUL_HTTP_ADDR", "CONSUL_SERVER") if env.get(v)), None)
        raw = env[var] if var else DEFAULT_ADDR
        var = var or "CONSUL_HTTP_ADDR"
        ssl = attempt(lambda: _flag(env, "CONSUL_HTTP_SSL"))
        verify_flag = attempt(lambda: _flag(env, "CONSUL_HTTP_SSL_VERIFY"))
        address = attempt(lambda: _address(var, raw, "https" if ssl else "http"))
        token = env.get("CONSUL_HTTP_TOKEN", "").strip() or None
        token_file = env.get("CONSUL_HTTP_TOKEN_FILE", "").strip()
        if token is None and token_file:
            try:
                token = Path(token_file).read_text().strip() or None
            except OSError as exc:
                problems.append(f"CONSUL_HTTP_TOKEN_FILE: cannot read {token_file}: {exc.strerror}")
        cacert = attempt(lambda: _readable(env, "CONSUL_CACERT"))
        client_cert = attempt(lambda: _readable(env, "CONSUL_CLIENT_CERT"))
        client_key = attempt(lambda: _readable(env, "CONSUL_CLIENT_KEY"))
        if bool(env.get("CONSUL_CLIENT_CERT")) != bool(env.get("CONSUL_CLIENT_KEY")):
            problems.append("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together")
        if problems or address is None:
            raise ConsulConfigError(problems)
        verify: bool | str = True
        if verify_flag is False:
            verify = False
        elif cacert:
            verify = cacert
        cert = (client_cert, client_key) if client_cert and client_key else None
        scheme, host, port = address
        return cls(host, port, scheme, token, verify, cert)


def _address(var: str, raw: str, scheme: str) -> tuple[str, str, int]:
    """(scheme, host, port) from ``host:port`` or ``scheme://host:port``."""
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in {"http", "https"}:
            raise ValueError(f"{var}: unsupported scheme in {raw!r}")
        scheme, netloc = parts.scheme, parts.netloc
    else:
        netloc = raw
    host, _, port_raw = netloc.rpartition(":")
    if not host:
        host, port_raw = netloc, "8500"
    # An IPv6 host keeps its brackets: URLs are joined as "<scheme>://<host>:<port>".
    bad_host = not host.strip("[]") or (":" in host and not host.startswith("["))
    if bad_host or not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
        raise ValueError(f"{var}: expected host:port or scheme://host:port, got {raw!r}")
    return scheme, host, int(port_raw)

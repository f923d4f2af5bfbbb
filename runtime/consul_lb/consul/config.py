"""Consul connection from Consul's own CONSUL_HTTP_* variables.

``CONSUL_SERVER=host:port`` (the older image's variable) is accepted as an alias of
``CONSUL_HTTP_ADDR``. The token is kept out of ``repr`` and of every log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import consul

DEFAULT_ADDR = "127.0.0.1:8500"


class ConsulConfigError(ValueError):
    pass


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
    raise ConsulConfigError(f"{name}: expected true or false, got {env[name]!r}")


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

    def client(self, timeout: float = 10.0) -> consul.Consul:
        """A new client: py-consul shares one requests session per client, so each
        watching thread gets its own."""
        return consul.Consul(
            host=self.host,
            port=self.port,
            scheme=self.scheme,
            token=self.token,
            verify=self.verify,
            cert=self.cert,
            connections_timeout=timeout,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsulConfig:
        # Errors name the variable the address came from.
        var = next((v for v in ("CONSUL_HTTP_ADDR", "CONSUL_SERVER") if env.get(v)), None)
        raw = env[var] if var else DEFAULT_ADDR
        var = var or "CONSUL_HTTP_ADDR"
        scheme = "https" if _flag(env, "CONSUL_HTTP_SSL") else "http"
        if "://" in raw:
            parts = urlsplit(raw)
            if parts.scheme not in {"http", "https"}:
                raise ConsulConfigError(f"{var}: unsupported scheme in {raw!r}")
            scheme = parts.scheme
            netloc = parts.netloc
        else:
            netloc = raw
        host, _, port_raw = netloc.rpartition(":")
        if not host:
            host, port_raw = netloc, "8500"
        # An IPv6 host keeps its brackets: py-consul joins "<scheme>://<host>:<port>".
        bad_host = not host.strip("[]") or (":" in host and not host.startswith("["))
        if bad_host or not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
            raise ConsulConfigError(f"{var}: expected host:port or scheme://host:port, got {raw!r}")
        token = env.get("CONSUL_HTTP_TOKEN") or None
        token_file = env.get("CONSUL_HTTP_TOKEN_FILE")
        if token is None and token_file:
            try:
                token = Path(token_file).read_text().strip() or None
            except OSError as exc:
                raise ConsulConfigError(
                    f"CONSUL_HTTP_TOKEN_FILE: cannot read {token_file}: {exc.strerror}"
                ) from exc
        verify: bool | str = True
        if _flag(env, "CONSUL_HTTP_SSL_VERIFY") is False:
            verify = False
        if env.get("CONSUL_CACERT") and verify is not False:
            verify = env["CONSUL_CACERT"]
        cert = None
        client_cert, client_key = env.get("CONSUL_CLIENT_CERT"), env.get("CONSUL_CLIENT_KEY")
        if bool(client_cert) != bool(client_key):
            raise ConsulConfigError("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together")
        if client_cert and client_key:
            cert = (client_cert, client_key)
        return cls(host, int(port_raw), scheme, token, verify, cert)

"""Consul connection from CONSUL_HTTP_* (and the old CONSUL_SERVER)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from consul_lb.consul.client import ConsulClient
from consul_lb.consul.config import ConsulConfig, ConsulConfigError

TOKEN = "0f3c9d2e-5b1a-4c7e-9d8f-secret-token"


def where(cfg: ConsulConfig) -> tuple[str, str, int]:
    return cfg.scheme, cfg.host, cfg.port


def test_defaults() -> None:
    cfg = ConsulConfig.from_env({})
    assert where(cfg) == ("http", "127.0.0.1", 8500)
    assert cfg.token is None and cfg.verify is True and cfg.cert is None
    assert cfg.address == "http://127.0.0.1:8500"


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("consul:8500", ("http", "consul", 8500)),
        ("10.1.2.3:18500", ("http", "10.1.2.3", 18500)),
        ("consul.service.consul", ("http", "consul.service.consul", 8500)),
        ("http://consul:8500", ("http", "consul", 8500)),
        ("https://consul.example.com:8501", ("https", "consul.example.com", 8501)),
        ("https://consul:8501/", ("https", "consul", 8501)),
        ("http://consul", ("http", "consul", 8500)),
        ("[::1]:8500", ("http", "[::1]", 8500)),
        ("http://[2001:db8::5]:8500", ("http", "[2001:db8::5]", 8500)),
    ],
)
def test_http_addr_forms(addr: str, expected: tuple[str, str, int]) -> None:
    assert where(ConsulConfig.from_env({"CONSUL_HTTP_ADDR": addr})) == expected


def test_ipv6_address_is_usable_in_a_url() -> None:
    cfg = ConsulConfig.from_env({"CONSUL_HTTP_ADDR": "[::1]:8500"})
    assert cfg.address == "http://[::1]:8500"
    client = ConsulClient(cfg)
    assert (client.pool.host, client.pool.port) == ("::1", 8500)


@pytest.mark.parametrize(
    "addr",
    [
        "consul:",
        "consul:http",
        "consul:0",
        "consul:65536",
        ":8500",
        "http://",
        "http://:8500",
        "ftp://consul:21",
        "unix:///var/run/consul.sock",
        "consul:8500/v1",
        "::1:8500",
    ],
)
def test_bad_http_addr(addr: str) -> None:
    with pytest.raises(ConsulConfigError, match=r"(?m)^  CONSUL_HTTP_ADDR: "):
        ConsulConfig.from_env({"CONSUL_HTTP_ADDR": addr})


def test_consul_server_alias() -> None:
    cfg = ConsulConfig.from_env({"CONSUL_SERVER": "consul.old:8500"})
    assert where(cfg) == ("http", "consul.old", 8500)


def test_http_addr_wins_over_the_alias() -> None:
    env = {"CONSUL_HTTP_ADDR": "new:8500", "CONSUL_SERVER": "old:8500"}
    assert ConsulConfig.from_env(env).host == "new"


def test_empty_http_addr_falls_back_to_the_alias() -> None:
    env = {"CONSUL_HTTP_ADDR": "", "CONSUL_SERVER": "old:8500"}
    assert ConsulConfig.from_env(env).host == "old"


def test_bad_alias_is_named_in_the_error() -> None:
    with pytest.raises(ConsulConfigError, match=r"(?m)^  CONSUL_SERVER: .*'old:port'"):
        ConsulConfig.from_env({"CONSUL_SERVER": "old:port"})


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes", "t"])
def test_http_ssl_switches_to_https(value: str) -> None:
    cfg = ConsulConfig.from_env({"CONSUL_HTTP_ADDR": "consul:8501", "CONSUL_HTTP_SSL": value})
    assert cfg.scheme == "https"
    assert cfg.address == "https://consul:8501"


@pytest.mark.parametrize("value", ["false", "0", "", "no"])
def test_http_ssl_off(value: str) -> None:
    assert ConsulConfig.from_env({"CONSUL_HTTP_SSL": value}).scheme == "http"


@pytest.mark.parametrize("value", ["ture", "https", "2", "enabled"])
def test_http_ssl_invalid(value: str) -> None:
    # A typo must not silently mean plain http.
    with pytest.raises(ConsulConfigError, match=r"(?m)^  CONSUL_HTTP_SSL: "):
        ConsulConfig.from_env({"CONSUL_HTTP_SSL": value})


def test_scheme_in_the_address_wins_over_http_ssl() -> None:
    # As in Consul's own API client: an explicit scheme in the address is used as is.
    env = {"CONSUL_HTTP_ADDR": "http://consul:8500", "CONSUL_HTTP_SSL": "true"}
    assert ConsulConfig.from_env(env).scheme == "http"
    env = {"CONSUL_HTTP_ADDR": "https://consul:8501", "CONSUL_HTTP_SSL": "false"}
    assert ConsulConfig.from_env(env).scheme == "https"


def test_token() -> None:
    assert ConsulConfig.from_env({"CONSUL_HTTP_TOKEN": TOKEN}).token == TOKEN
    assert ConsulConfig.from_env({"CONSUL_HTTP_TOKEN": ""}).token is None


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    assert ConsulConfig.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)}).token == TOKEN


def test_empty_token_file_means_no_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    assert ConsulConfig.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)}).token is None


def test_token_wins_over_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file")
    env = {"CONSUL_HTTP_TOKEN": TOKEN, "CONSUL_HTTP_TOKEN_FILE": str(path)}
    assert ConsulConfig.from_env(env).token == TOKEN


def test_missing_token_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(
        ConsulConfigError, match=r"(?m)^  CONSUL_HTTP_TOKEN_FILE: cannot read .*nope"
    ):
        ConsulConfig.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0)
    with pytest.raises(ConsulConfigError, match="Permission denied") as caught:
        ConsulConfig.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)})
    assert TOKEN not in str(caught.value)


def test_token_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConsulConfigError, match=r"(?m)^  CONSUL_HTTP_TOKEN_FILE: cannot read"):
        ConsulConfig.from_env({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path)})


def test_token_never_in_repr_or_address(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    for env in ({"CONSUL_HTTP_TOKEN": TOKEN}, {"CONSUL_HTTP_TOKEN_FILE": str(path)}):
        cfg = ConsulConfig.from_env({**env, "CONSUL_HTTP_ADDR": "https://consul:8501"})
        assert cfg.token == TOKEN
        for shown in (repr(cfg), str(cfg), cfg.address, f"{cfg!r}"):
            assert TOKEN not in shown


@pytest.fixture
def pem(tmp_path: Path) -> Callable[[str], str]:
    """A readable file for the certificate variables (their content is read by TLS)."""

    def make(name: str) -> str:
        path = tmp_path / name
        path.write_text("-----BEGIN CERTIFICATE-----\n")
        return str(path)

    return make


def test_cacert(pem: Callable[[str], str]) -> None:
    ca = pem("ca.pem")
    cfg = ConsulConfig.from_env({"CONSUL_CACERT": ca})
    assert cfg.verify == ca


@pytest.mark.parametrize("variable", ["CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"])
def test_a_certificate_file_that_cannot_be_read_is_an_error_at_start(
    variable: str, tmp_path: Path, pem: Callable[[str], str]
) -> None:
    env = {"CONSUL_HTTP_SSL": "true", "CONSUL_CLIENT_CERT": pem("c"), "CONSUL_CLIENT_KEY": pem("k")}
    env[variable] = str(tmp_path / "missing.pem")
    with pytest.raises(ConsulConfigError, match=rf"(?m)^  {variable}: cannot read .*missing.pem"):
        ConsulConfig.from_env(env)


def test_every_bad_variable_is_named_at_once(tmp_path: Path) -> None:
    env = {
        "CONSUL_HTTP_ADDR": "consul:http",
        "CONSUL_HTTP_SSL": "ture",
        "CONSUL_CACERT": str(tmp_path / "nope.pem"),
    }
    with pytest.raises(ConsulConfigError) as caught:
        ConsulConfig.from_env(env)
    named = [p.split(":")[0] for p in caught.value.problems]
    assert sorted(named) == ["CONSUL_CACERT", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL"]


def test_empty_token_with_a_token_file_uses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    env = {"CONSUL_HTTP_TOKEN": "", "CONSUL_HTTP_TOKEN_FILE": str(path)}
    assert ConsulConfig.from_env(env).token == TOKEN


def test_ssl_verify_off_wins_over_cacert(pem: Callable[[str], str]) -> None:
    env = {"CONSUL_CACERT": pem("ca.pem"), "CONSUL_HTTP_SSL_VERIFY": "false"}
    assert ConsulConfig.from_env(env).verify is False
    assert ConsulConfig.from_env({"CONSUL_HTTP_SSL_VERIFY": "true"}).verify is True


def test_ssl_verify_invalid() -> None:
    with pytest.raises(ConsulConfigError, match=r"(?m)^  CONSUL_HTTP_SSL_VERIFY: "):
        ConsulConfig.from_env({"CONSUL_HTTP_SSL_VERIFY": "nope"})


def test_client_cert_and_key(pem: Callable[[str], str]) -> None:
    env = {"CONSUL_CLIENT_CERT": pem("cert.pem"), "CONSUL_CLIENT_KEY": pem("key.pem")}
    assert ConsulConfig.from_env(env).cert == (env["CONSUL_CLIENT_CERT"], env["CONSUL_CLIENT_KEY"])


@pytest.mark.parametrize("present", ["CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"])
def test_client_cert_and_key_go_together(present: str) -> None:
    with pytest.raises(ConsulConfigError, match="go together"):
        ConsulConfig.from_env({present: "/c/file.pem"})


def test_client_carries_the_settings(pem: Callable[[str], str]) -> None:
    env = {
        "CONSUL_HTTP_ADDR": "https://consul:8501",
        "CONSUL_HTTP_TOKEN": TOKEN,
        "CONSUL_CACERT": pem("ca.pem"),
        "CONSUL_CLIENT_CERT": pem("cert.pem"),
        "CONSUL_CLIENT_KEY": pem("key.pem"),
    }
    client = ConsulClient(ConsulConfig.from_env(env), max_conns=7)
    pool: Any = client.pool
    assert (pool.scheme, pool.host, pool.port) == ("https", "consul", 8501)
    assert client.headers["X-Consul-Token"] == TOKEN
    assert pool.ca_certs == env["CONSUL_CACERT"]
    assert (pool.cert_file, pool.key_file) == (env["CONSUL_CLIENT_CERT"], env["CONSUL_CLIENT_KEY"])
    assert pool.pool.maxsize == 7  # the bound on connections to Consul

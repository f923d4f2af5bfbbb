"""The TLS variables (issue 12) -> Settings.tls: default, override, invalid; in the style of
test_settings.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from consul_lb.settings import SettingsError, from_env
from consul_lb.tls.settings import (
    INTERMEDIATE_CIPHERS,
    INTERMEDIATE_CIPHERSUITES,
    VARIABLES,
    TlsSettings,
)

DOM = {"HAPROXY_DOM": "example.com"}
CA_FILE = Path(__file__)  # any readable file stands for a CA bundle here

DEFAULTS: dict[str, object] = {
    "HAPROXY_HTTPS_PORT": 8443,
    "HAPROXY_TLS_CERT_DIR": None,
    "HAPROXY_TLS_CERT_KV": None,
    "HAPROXY_TLS_DEFAULT_CERT": None,
    "HAPROXY_TLS_MIN_VERSION": "TLSv1.2",
    "HAPROXY_TLS_CIPHERS": INTERMEDIATE_CIPHERS,
    "HAPROXY_TLS_CIPHERSUITES": INTERMEDIATE_CIPHERSUITES,
    "HAPROXY_BACKEND_CA_FILE": None,
    "HAPROXY_TRUSTED_PROXIES": (),
}
# variable -> (raw override, the value it gives, invalid raw values)
CASES: dict[str, tuple[str, object, tuple[str, ...]]] = {
    "HAPROXY_HTTPS_PORT": ("443", 443, ("0", "65536", "https", "443\nbind :1")),
    "HAPROXY_TLS_CERT_DIR": (
        "/etc/consul-lb/certs",
        Path("/etc/consul-lb/certs"),
        ("certs", "/etc/my certs", "/etc/certs\nglobal", "/etc/certs#x"),
    ),
    "HAPROXY_TLS_CERT_KV": (
        "/tls/certs",
        "tls/certs/",
        ("tls certs", "tls/../secrets", "tls//certs", "tls/certs?recurse", "tls/%2e%2e"),
    ),
    "HAPROXY_TLS_DEFAULT_CERT": (
        "www.example.com.pem",
        "www.example.com.pem",
        ("../x.pem", "a/b.pem", ".hidden", "a b", "x\ny"),
    ),
    "HAPROXY_TLS_MIN_VERSION": ("tlsv1.3", "TLSv1.3", ("1.2", "SSLv3", "TLSv1.4")),
    "HAPROXY_TLS_CIPHERS": (
        "ECDHE-RSA-AES128-GCM-SHA256:!aNULL",
        "ECDHE-RSA-AES128-GCM-SHA256:!aNULL",
        ("ECDHE RSA", "HIGH\nbind :1", "HIGH#x", "'HIGH'"),
    ),
    "HAPROXY_TLS_CIPHERSUITES": (
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_256_GCM_SHA384",
        ("AES256", "TLS_AES_256_GCM_SHA384 x", "tls_aes_128_gcm_sha256"),
    ),
    "HAPROXY_BACKEND_CA_FILE": (
        str(CA_FILE),
        CA_FILE,
        ("/nonexistent/ca.pem", "/tmp", "ca.pem", "/etc/ca file.pem"),
    ),
    "HAPROXY_TRUSTED_PROXIES": (
        "10.0.0.0/8, 192.0.2.7,2001:db8::/32",
        ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"),
        ("10.0.0.0/33", "proxy.example.com", "10.0.0.0/8 any", ",", "10.0.0.0/8\nacl x"),
    ),
}


def test_every_variable_is_covered() -> None:
    assert set(DEFAULTS) == set(CASES) == set(VARIABLES)


@pytest.mark.parametrize("variable", sorted(DEFAULTS))
def test_default_when_unset(variable: str) -> None:
    assert getattr(from_env(DOM).tls, VARIABLES[variable][0]) == DEFAULTS[variable]


@pytest.mark.parametrize("variable", sorted(CASES))
def test_override(variable: str) -> None:
    raw, expected, _ = CASES[variable]
    tls = from_env({**DOM, variable: raw}).tls
    field = VARIABLES[variable][0]
    assert getattr(tls, field) == expected
    others = {f: v for f, v in vars(tls).items() if f != field}
    assert others == {f: v for f, v in vars(TlsSettings()).items() if f != field}


@pytest.mark.parametrize(
    ("variable", "raw"),
    [(variable, raw) for variable, (_, _, bad) in sorted(CASES.items()) for raw in bad],
)
def test_invalid_value_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({**DOM, variable: raw})
    message = str(caught.value)
    assert f"{variable}:" in message
    assert message.count("\n") == 1  # one problem, one line


def test_https_port_must_differ_from_the_others() -> None:
    with pytest.raises(SettingsError, match="HAPROXY_HTTP_PORT and HAPROXY_HTTPS_PORT"):
        from_env({**DOM, "HAPROXY_HTTPS_PORT": "8080"})
    with pytest.raises(SettingsError, match="HAPROXY_STATS_PORT and HAPROXY_HTTPS_PORT"):
        from_env({**DOM, "HAPROXY_HTTPS_PORT": "4444"})


def test_tls_is_enabled_by_either_source() -> None:
    assert not from_env(DOM).tls.enabled
    assert from_env({**DOM, "HAPROXY_TLS_CERT_DIR": "/certs"}).tls.enabled
    assert from_env({**DOM, "HAPROXY_TLS_CERT_KV": "tls"}).tls.enabled

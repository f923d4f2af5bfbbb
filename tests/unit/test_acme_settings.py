"""The ACME variables (issue 13) -> Settings.acme: default, override, invalid; in the style
of test_tls_settings.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from consul_lb.acme.settings import VARIABLES, AcmeSettings
from consul_lb.settings import SettingsError, from_env

# ACME stores what it obtains under the TLS KV prefix: every case has one.
BASE = {"HAPROXY_DOM": "example.com", "HAPROXY_TLS_CERT_KV": "tls/certs"}
CA_FILE = Path(__file__)  # any readable file stands for a CA bundle here
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

DEFAULTS: dict[str, object] = {
    "HAPROXY_ACME_DIRECTORY": None,
    "HAPROXY_ACME_EMAIL": None,
    "HAPROXY_ACME_CA_FILE": None,
    "HAPROXY_ACME_RENEW_BEFORE": 30 * 86400.0,
    "HAPROXY_ACME_KV": "consul-lb/acme/",
    "HAPROXY_ACME_RETRY": (300.0, 3600.0),
}
# variable -> (raw override, the value it gives, invalid raw values)
CASES: dict[str, tuple[str, object, tuple[str, ...]]] = {
    "HAPROXY_ACME_DIRECTORY": (
        STAGING,
        STAGING,
        (
            "http://acme.example.com/directory",
            "acme-v02.api.letsencrypt.org/directory",
            "https://acme.example.com/dir ectory",
            "https://acme.example.com/directory\nx",
            "https://user@acme.example.com/",
            "letsencrypt",
        ),
    ),
    "HAPROXY_ACME_EMAIL": (
        "ops+acme@example.com",
        "ops+acme@example.com",
        ("ops", "ops@localhost", "ops@example.com\nx", "o ps@example.com", "@example.com"),
    ),
    "HAPROXY_ACME_CA_FILE": (
        str(CA_FILE),
        CA_FILE,
        ("/nonexistent/ca.pem", "/tmp", "ca.pem", "/etc/ca file.pem"),
    ),
    "HAPROXY_ACME_RENEW_BEFORE": ("360h", 15 * 86400.0, ("30d", "-1h", "0", "0s", "soon")),
    "HAPROXY_ACME_KV": (
        "/lb/acme/",
        "lb/acme/",
        ("lb acme", "lb/../acme", "lb//acme", "lb/acme?recurse"),
    ),
    "HAPROXY_ACME_RETRY": ("30s:10m", (30.0, 600.0), ("10m:30s", "0:1m", "500ms:1m", "often")),
}


def test_every_variable_is_covered() -> None:
    assert set(DEFAULTS) == set(CASES) == set(VARIABLES)


@pytest.mark.parametrize("variable", sorted(DEFAULTS))
def test_default_when_unset(variable: str) -> None:
    assert getattr(from_env(BASE).acme, VARIABLES[variable][0]) == DEFAULTS[variable]


@pytest.mark.parametrize("variable", sorted(CASES))
def test_override(variable: str) -> None:
    raw, expected, _ = CASES[variable]
    acme = from_env({**BASE, variable: raw}).acme
    field = VARIABLES[variable][0]
    assert getattr(acme, field) == expected
    others = {f: v for f, v in vars(acme).items() if f != field}
    assert others == {f: v for f, v in vars(AcmeSettings()).items() if f != field}


@pytest.mark.parametrize(
    ("variable", "raw"),
    [(variable, raw) for variable, (_, _, bad) in sorted(CASES.items()) for raw in bad],
)
def test_invalid_value_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({**BASE, "HAPROXY_ACME_DIRECTORY": STAGING, variable: raw})
    message = str(caught.value)
    assert f"{variable}:" in message
    assert message.count("\n") == 1  # one problem, one line


def test_acme_is_off_without_a_directory() -> None:
    assert not from_env(BASE).acme.enabled
    assert from_env({**BASE, "HAPROXY_ACME_DIRECTORY": STAGING}).acme.enabled


def test_acme_needs_the_tls_kv_prefix() -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({"HAPROXY_DOM": "example.com", "HAPROXY_ACME_DIRECTORY": STAGING})
    assert caught.value.problems == [
        "HAPROXY_ACME_DIRECTORY needs HAPROXY_TLS_CERT_KV: the certificates ACME obtains are "
        "stored under that Consul KV prefix, where every load balancer loads them "
        "(e.g. HAPROXY_TLS_CERT_KV=tls/certs)"
    ]
    # Without a directory, nothing is asked of the TLS settings.
    assert from_env({"HAPROXY_DOM": "example.com", "HAPROXY_ACME_EMAIL": "a@example.com"})


@pytest.mark.parametrize(("acme_kv", "tls_kv"), [("tls", "tls/certs"), ("tls/certs/acme", "tls")])
def test_the_acme_and_tls_prefixes_stay_apart(acme_kv: str, tls_kv: str) -> None:
    # ACME's account key under the TLS prefix would be read as a (bad) certificate.
    env = {
        "HAPROXY_DOM": "example.com",
        "HAPROXY_ACME_DIRECTORY": STAGING,
        "HAPROXY_ACME_KV": acme_kv,
        "HAPROXY_TLS_CERT_KV": tls_kv,
    }
    with pytest.raises(SettingsError, match="must not contain one another"):
        from_env(env)


def test_every_problem_at_once() -> None:
    env = {
        "HAPROXY_DOM": "example.com",
        "HAPROXY_ACME_DIRECTORY": STAGING,
        "HAPROXY_ACME_EMAIL": "nobody",
        "HAPROXY_ACME_RETRY": "soon",
    }
    with pytest.raises(SettingsError) as caught:
        from_env(env)
    assert [p.split(":")[0].split()[0] for p in caught.value.problems] == [
        "HAPROXY_ACME_EMAIL",
        "HAPROXY_ACME_RETRY",
        "HAPROXY_ACME_DIRECTORY",  # needs HAPROXY_TLS_CERT_KV
    ]

"""PEM bundles -> served or skipped certificates (cryptography), and the choice of what
is served from the two sources. Certificates are made here, by tests/certs.py."""

from __future__ import annotations

import pytest
from consul_lb.tls.bundle import BadBundle, Certificate, parse
from consul_lb.tls.certs import EMPTY, CertSet, Parsed, TlsView, crt_list, select
from consul_lb.tls.sources import decode_entries
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from devtools.certs import Ca, rsa_key

CA = Ca()
WWW = CA.issue("www.example.com")
WILD = CA.issue("*.apps.example.com", "apps.example.com")


def served(result: Certificate | BadBundle) -> Certificate:
    assert isinstance(result, Certificate), result
    return result


def reason(result: Certificate | BadBundle) -> str:
    assert isinstance(result, BadBundle), result
    return result.reason


def test_a_bundle_is_served_with_the_names_of_its_san() -> None:
    cert = served(parse("wild.pem", "dir", WILD.bundle))
    assert cert.names == ("*.apps.example.com", "apps.example.com")
    assert cert.not_after == pytest.approx(WILD.cert.not_valid_after_utc.timestamp())
    assert cert.fingerprint == WILD.fingerprint
    # What HAProxy is given: the leaf, its chain, then the key.
    assert cert.pem.index(WILD.cert_pem) < cert.pem.index(CA.pem) < cert.pem.index(b"PRIVATE KEY")


def test_the_key_never_shows_in_repr_or_state() -> None:
    cert = served(parse("www.pem", "dir", WWW.bundle))
    key_body = WWW.key_pem.decode().splitlines()[1]
    assert key_body not in repr(cert)
    assert key_body not in str(cert.public(0.0))


def test_the_cn_counts_only_without_a_san() -> None:
    assert served(parse("a", "dir", CA.issue("cn.example.com", san=False).bundle)).names == (
        "cn.example.com",
    )
    with_san = CA.issue("san.example.com", cn="other.example.com")
    assert served(parse("b", "dir", with_san.bundle)).names == ("san.example.com",)


def test_the_leaf_is_found_whatever_the_order() -> None:
    bundle = WWW.key_pem + CA.pem + WWW.cert_pem
    cert = served(parse("www.pem", "kv", bundle))
    assert cert.pem.startswith(WWW.cert_pem)


def test_rsa_keys_of_2048_bits_are_served() -> None:
    served(parse("rsa.pem", "dir", CA.issue("rsa.example.com", key=rsa_key(2048)).bundle))


def test_expired_certificates_are_served() -> None:
    # Served, reported (see the manager): an expired certificate beats none.
    served(parse("old.pem", "dir", CA.issue("old.example.com", days=-3).bundle))


def encrypted(leaf_key: ec.EllipticCurvePrivateKey) -> bytes:
    return leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


OTHER = CA.issue("other.example.com")


@pytest.mark.parametrize(
    ("bundle", "why"),
    [
        (b"garbage", "no PEM block"),
        (b"", "no PEM block"),
        (WWW.cert_pem, "no private key"),
        (WWW.key_pem, "no certificate"),
        (WWW.cert_pem + OTHER.key_pem, "does not match the certificate"),
        (WWW.cert_pem + WWW.key_pem + OTHER.key_pem, "2 private keys"),
        (WWW.cert_pem + encrypted(WWW.key), "encrypted"),  # type: ignore[arg-type]
        (
            WWW.cert_pem.replace(b"MI", b"XX", 3) + WWW.key_pem,
            "certificate 1 cannot be read",
        ),
        (CA.issue("s.example.com", key=rsa_key(1024)).bundle, "RSA key of 1024 bits"),
        (
            CA.issue("k.example.com", key=ec.generate_private_key(ec.SECP256K1())).bundle,
            "secp256k1",
        ),
        (CA.issue("nameless", san=False, cn="").bundle, "names no host"),
        (b"x" * (1 << 21), "larger than 1024 KiB"),
    ],
)
def test_bad_bundles_are_skipped_with_a_reason(bundle: bytes, why: str) -> None:
    assert why in reason(parse("bad.pem", "dir", bundle))


def test_ed25519_keys_are_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert "expected an RSA or ECDSA key" in reason(parse("e.pem", "dir", WWW.cert_pem + pem))


def test_reasons_never_quote_the_bundle() -> None:
    mismatch = WWW.cert_pem + OTHER.key_pem
    text = reason(parse("bad.pem", "dir", mismatch))
    assert "BEGIN" not in text and OTHER.key_pem.decode().splitlines()[1] not in text


# -- select ------------------------------------------------------------------------------


def test_both_sources_are_served_the_directory_wins_a_name() -> None:
    found = select(
        {
            "dir": {"www.pem": WWW.bundle},
            "kv": {"wild": WILD.bundle, "www.pem": OTHER.bundle},
        },
        EMPTY,
        None,
    )
    assert [(c.name, c.source) for c in found.certs] == [("wild", "kv"), ("www.pem", "dir")]
    assert [(b.name, b.source) for b in found.skipped] == [("www.pem", "kv")]
    assert "directory has a certificate of this name" in found.skipped[0].reason


def test_names_that_are_no_file_names_are_skipped() -> None:
    found = select({"kv": {"a/b.pem": WWW.bundle, "ok.pem": WWW.bundle}}, EMPTY, None)
    assert [c.name for c in found.certs] == ["ok.pem"]
    assert "is not a certificate name" in found.skipped[0].reason


def test_a_bundle_that_turns_bad_keeps_its_previous_version() -> None:
    before = select({"kv": {"www": WWW.bundle}}, EMPTY, None)
    after = select({"kv": {"www": b"garbage"}}, before, None)
    assert after.certs == before.certs
    assert after.skipped[0].reason.endswith("; serving its previous version")
    # Removed, it goes.
    assert select({"kv": {}}, after, None).certs == ()


def test_an_unreadable_file_is_skipped() -> None:
    found = select({"dir": {"www.pem": PermissionError(13, "Permission denied")}}, EMPTY, None)
    assert found.skipped[0].reason == "cannot be read: Permission denied"


def test_the_default_is_named_or_the_first_by_name() -> None:
    sources = {"dir": {"b.pem": WWW.bundle, "a.pem": WILD.bundle}}
    assert select(sources, EMPTY, None).default == "a.pem"
    assert select(sources, EMPTY, "b.pem").default == "b.pem"
    assert select(sources, EMPTY, "missing.pem").default == "a.pem"
    assert select({}, EMPTY, "b.pem").default is None


def test_the_crt_list_puts_the_default_first() -> None:
    found = select({"dir": {"b.pem": WWW.bundle, "a.pem": WILD.bundle}}, EMPTY, "b.pem")
    assert crt_list(found, "/s/tls/certs") == "/s/tls/certs/b.pem\n/s/tls/certs/a.pem\n"
    assert TlsView.of(found, "/s/tls/certs.list") == TlsView(True, "b.pem", "/s/tls/certs.list")
    assert TlsView.of(CertSet((), found.skipped, None), "/x") == TlsView()


def test_each_content_is_parsed_once() -> None:
    parsed = Parsed()
    select({"dir": {"www.pem": WWW.bundle}}, EMPTY, None, parsed)
    first = dict(parsed.known)
    select({"dir": {"www.pem": WWW.bundle}}, EMPTY, None, parsed)
    assert parsed.known == first and len(first) == 1
    select({"dir": {}}, EMPTY, None, parsed)
    assert parsed.known == {}


def test_kv_entries_are_named_after_the_prefix() -> None:
    import base64

    entries = [
        {"Key": "tls/certs/", "Value": None},
        {"Key": "tls/certs/www", "Value": base64.b64encode(b"PEM").decode()},
        {"Key": "tls/certs/sub/", "Value": None},
        {"Key": "tls/certs/empty", "Value": None},
    ]
    assert decode_entries(entries, "tls/certs/") == {"www": b"PEM", "empty": b""}

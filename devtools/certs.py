"""Certificates made with ``cryptography`` for the tests and ``invoke bench tls``: a CA, and
leaf bundles (leaf, chain, key in one PEM, HAProxy's ``crt`` convention) signed by it.
Nothing is checked in."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass
class Ca:
    """A CA that signs leaf certificates; ``pem`` is what a client trusts."""

    name: str = "consul-lb test CA"

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            # What strict verifiers (Python 3.13's default VERIFY_X509_STRICT) ask of a CA.
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _pem(self.cert)

    def issue(
        self,
        *names: str,
        days: float = 90,
        key: PrivateKey | None = None,
        cn: str | None = None,
        san: bool = True,
        ips: tuple[str, ...] = (),
        age: float | None = None,
    ) -> Leaf:
        """A leaf for ``names`` (subjectAltName DNS entries unless ``san`` is False),
        valid for ``days`` from now (negative: expired), issued ``age`` days ago (by
        default one day, or a day before it expired)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        common = cn if cn is not None else (names[0] if names else "no-name")
        # cn="": a subject without a CN (an organisation only).
        subject = (
            x509.NameAttribute(NameOID.COMMON_NAME, common)
            if common
            else (x509.NameAttribute(NameOID.ORGANIZATION_NAME, "consul-lb tests"))
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([subject]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=age or max(1.0, -days + 1)))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        entries: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        entries += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if san and entries:
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Leaf(cert, key, self)


@dataclass
class Leaf:
    cert: x509.Certificate
    key: PrivateKey
    ca: Ca

    @property
    def bundle(self) -> bytes:
        """Leaf, chain (the CA) and key: a bundle as users write it."""
        return _pem(self.cert) + self.ca.pem + _pem_key(self.key)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)

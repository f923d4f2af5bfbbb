"""PEM bundles -> checked certificates, with the ``cryptography`` library.

A bundle is HAProxy's ``crt`` file: the certificate, its chain and its private key in one
PEM file. It is served only when it holds exactly one private key, unencrypted, of a type
HAProxy's OpenSSL serves (RSA of 2048 bits or more, or ECDSA on P-256, P-384, P-521), and
a certificate whose public key is that key's. The names it answers for come from its
subjectAltName DNS entries (wildcards included), or from its CN when it has no
subjectAltName, as TLS clients match them.

Nothing here logs or shows a key: a ``Certificate`` keeps its PEM out of ``repr``, and
the reasons of a ``BadBundle`` never quote the file's content.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

MAX_BUNDLE = 1 << 20  # bytes: larger is not a certificate bundle
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----.+?-----END \1-----", re.DOTALL)
KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")
CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048  # OpenSSL 3's default security level refuses smaller keys


@dataclass(frozen=True)
class Certificate:
    """A bundle that can be served, as HAProxy is given it (leaf, chain, key)."""

    name: str  # its file name, or its key under the KV prefix
    source: str  # "dir" or "kv"
    names: tuple[str, ...]  # host names it answers for (SAN, else CN), lower-case
    not_after: float  # Unix time the leaf expires
    fingerprint: str  # SHA-256 of the leaf certificate, hex (public)
    pem: bytes = field(repr=False)  # contains the private key: never logged or shown

    def public(self, now: float) -> dict[str, object]:
        """What the state endpoint shows (no key material)."""
        return {
            "name": self.name,
            "source": self.source,
            "names": list(self.names),
            "not_after": self.not_after,
            "expires_in_days": round((self.not_after - now) / 86400, 1),
            "sha256": self.fingerprint,
        }


@dataclass(frozen=True)
class BadBundle:
    """A bundle that is not served, and why (never its content)."""

    name: str
    source: str
    reason: str

    def public(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "reason": self.reason}


class BundleError(ValueError):
    pass


def parse(name: str, source: str, data: bytes) -> Certificate | BadBundle:
    """The certificate a bundle holds, or why it cannot be served."""
    try:
        return _parse(name, source, data)
    except BundleError as exc:
        return BadBundle(name, source, str(exc))


def _parse(name: str, source: str, data: bytes) -> Certificate:
    if len(data) > MAX_BUNDLE:
        raise BundleError(f"larger than {MAX_BUNDLE // 1024} KiB: not a certificate bundle")
    blocks = [(m.group(1), m.group(0)) for m in PEM_BLOCK.finditer(data)]
    if not blocks:
        raise BundleError("no PEM block: expected a certificate, its chain and its private key")
    certs: list[x509.Certificate] = []
    keys: list[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = []
    for label, block in blocks:
        if label == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise BundleError(f"certificate {len(certs) + 1} cannot be read") from None
        elif label == b"ENCRYPTED PRIVATE KEY":
            raise BundleError("the private key is encrypted: HAProxy needs it unencrypted")
        elif label in KEY_LABELS:
            keys.append(_key(block))
    if not certs:
        raise BundleError("no certificate")
    if len(keys) != 1:
        raise BundleError("no private key" if not keys else f"{len(keys)} private keys")
    key = keys[0]
    wanted = _public(key.public_key())
    leaves = [c for c in certs if _public(c.public_key()) == wanted]
    if not leaves:
        raise BundleError("the private key does not match the certificate")
    leaf = leaves[0]
    names = host_names(leaf)
    if not names:
        raise BundleError("the certificate names no host (no DNS name in its SAN, no CN)")
    chain = [c for c in certs if c is not leaf]
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [leaf, *chain])
    pem += key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Certificate(
        name=name,
        source=source,
        names=names,
        not_after=leaf.not_valid_after_utc.timestamp(),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        pem=pem,
    )


def _key(block: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except TypeError:  # cryptography's word for "this key needs a password"
        raise BundleError("the private key is encrypted: HAProxy needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BundleError("the private key cannot be read") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise BundleError(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} needed")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, CURVES):
            raise BundleError(f"ECDSA key on {key.curve.name}: expected P-256, P-384 or P-521")
        return key
    raise BundleError(f"{type(key).__name__.removeprefix('_')}: expected an RSA or ECDSA key")


def _public(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return b""  # a certificate of another key type matches no accepted key
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def host_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names of the subjectAltName; the CN only when there is no subjectAltName
    (RFC 6125 6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        found = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        found = list(san.value.get_values_for_type(x509.DNSName))
    return tuple(sorted({n.lower() for n in found if n}))


def digest(data: bytes) -> str:
    """A short identity of a bundle's bytes (to tell versions apart in logs)."""
    return hashlib.sha256(data).hexdigest()[:12]

"""The sample backend (deploy/demo/echo.py) over TLS, with a self-signed certificate made
at start: an instance that serves TLS itself (HAPROXY.BACKEND.TLS). Run with the image's
runtime Python, which has ``cryptography``."""

from __future__ import annotations

import datetime
import os
import ssl
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.dirname(os.environ.get("ECHO_SCRIPT", "/srv/echo.py")))
import echo  # type: ignore[import-not-found]  # mounted next to this script


def self_signed() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, echo.NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


if __name__ == "__main__":
    with tempfile.NamedTemporaryFile(suffix=".pem") as bundle:
        bundle.write(self_signed())
        bundle.flush()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(bundle.name)
    server = echo.Server(("", echo.PORT), echo.Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()

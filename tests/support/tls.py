"""A throwaway certificate authority and a server certificate for loopback TLS in tests.

`make_server_tls(directory)` writes, with Python's `cryptography`:

- ``ca.pem``: the CA's certificate, what clients trust (`ssl_cafile`, `ssl.ca.location`);
- ``server.pem``: the server's unencrypted PKCS#8 private key followed by its certificate
  chain (server certificate, then the CA), the layout Kafka reads with
  ``ssl.keystore.type=PEM`` and ``ssl.keystore.location``.

The server certificate names ``IP:127.0.0.1`` and ``DNS:localhost``, so clients that
verify host names accept it on either. Keys are EC P-256: made in a millisecond, and every
client here (Python's ssl, librdkafka's OpenSSL, the JDK) speaks ECDSA.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)
_CLOCK_SKEW = datetime.timedelta(days=1)


@dataclass(frozen=True)
class TlsFiles:
    """Where `make_server_tls` wrote its PEM files."""

    ca_file: Path
    keystore: Path  # the server's key, then its certificate chain


def make_server_tls(
    directory: Path,
    *,
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    dns_names: tuple[str, ...] = ("localhost",),
) -> TlsFiles:
    """Make a CA and a server certificate signed by it, as PEM files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "waxhouse test CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    alt_names: list[x509.GeneralName] = [
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses),
        *(x509.DNSName(name) for name in dns_names),
    ]
    server_cert = (
        _builder(server_name, ca_name, server_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(ca_file=directory / "ca.pem", keystore=directory / "server.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (server_cert, ca_cert))
    files.keystore.touch(mode=0o600)
    files.keystore.write_bytes(key_pem + chain_pem)
    return files


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
    )

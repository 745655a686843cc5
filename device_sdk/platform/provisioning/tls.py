"""A test certificate authority for the broker's TLS listener, made with `cryptography`.

It is for development and tests: its key lies on disk beside the broker's files, unencrypted.
Production brings its own CA and server certificate (`device-sdk provision --tls-files`).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_sdk.protocol.errors import ConfigError
from device_sdk.state import write_file


@dataclass(frozen=True)
class TlsFiles:
    """The CA certificate clients trust, and the broker's certificate and private key."""

    ca: Path
    cert: Path
    key: Path

    def check(self) -> TlsFiles:
        """Refuse files that are missing (Mosquitto would not start)."""
        for path in (self.ca, self.cert, self.key):
            if not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        return self


DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
SERVER_DAYS = 825


def ensure_test_ca(tls_dir: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TlsFiles:
    """`ca.crt`, `ca.key`, `server.crt` and `server.key` in `tls_dir`, made on the first call only.

    The server certificate names every host of `hosts` (DNS names, or IP addresses) in its
    subject alternative names. A later call keeps the existing files, whatever `hosts` says.
    """
    files = TlsFiles(tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key")
    if all(path.is_file() for path in (files.ca, files.cert, files.key)):
        return files
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "device-sdk"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"device-sdk test CA {secrets.token_hex(4)}"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(host) for host in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_file(tls_dir / "ca.key", _key_pem(ca_key), 0o600)
    write_file(files.key, _key_pem(server_key), 0o600)
    write_file(files.cert, server_cert.public_bytes(pem), 0o644)
    write_file(files.ca, ca_cert.public_bytes(pem), 0o644)  # last: its presence marks a complete set
    return files


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

"""A throw-away PKI for TLS tests: a CA, a server and a client certificate, and a rogue CA.

EC P-256 keys keep generation in the milliseconds. The rogue CA issues its own server
certificate for the same address, which is what a pinning test needs: a perfectly valid
certificate for 127.0.0.1 that the pinned CA did not sign.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_LOCALHOST = ipaddress.ip_address("127.0.0.1")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey):
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


class _CA:
    def __init__(self, common_name: str) -> None:
        self.key = _key()
        self.name = _name(common_name)
        self.cert = (
            _builder(self.name, self.name, self.key)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, common_name: str, *, server: bool) -> tuple[bytes, bytes]:
        """A leaf certificate and its key, both PEM."""
        key = _key()
        builder = (
            _builder(_name(common_name), self.name, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(_LOCALHOST)]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


class TestPKI:
    """Writes every file into ``folder``; the attributes are their paths.

    ``ca_cert`` — the CA an upstream client pins; ``server_cert``/``server_key`` — the fake
    upstream's identity (IP SAN 127.0.0.1), signed by the CA; ``client_pem`` — a client
    certificate signed by the CA, certificate and key in one file (what ``client_cert``
    expects); ``other_ca_cert`` — an unrelated CA; ``rogue_server_cert``/``rogue_server_key``
    — a server identity for 127.0.0.1 signed by that other CA; ``rogue_client_pem`` — a
    client certificate from the other CA.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        ca = _CA("appliance test CA")
        other = _CA("unrelated test CA")

        self.ca_cert = self._write("ca.pem", _cert_pem(ca.cert))
        self.other_ca_cert = self._write("other-ca.pem", _cert_pem(other.cert))
        cert, key = ca.issue("127.0.0.1", server=True)
        self.server_cert = self._write("server.pem", cert)
        self.server_key = self._write("server.key", key)
        cert, key = ca.issue("appliance-test-client", server=False)
        self.client_pem = self._write("client.pem", cert + key)
        cert, key = other.issue("127.0.0.1", server=True)
        self.rogue_server_cert = self._write("rogue-server.pem", cert)
        self.rogue_server_key = self._write("rogue-server.key", key)
        cert, key = other.issue("rogue-client", server=False)
        self.rogue_client_pem = self._write("rogue-client.pem", cert + key)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

"""`edgeinfer certs`: a site's CA, a server certificate and client certificates, with `cryptography`.

For a site without a PKI of its own. The CA key signs server and client certificates; keep it off
the edge boxes (only ca.pem goes there, as [tls] client_ca and as the clients' trust root).
ECDSA P-256 keys, SHA-256 signatures; the server certificate names every --hosts entry as a
subject alternative name (what clients check), the client certificates their name as the common
name (what [tls] subject_roles maps to roles).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Iterable


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, site: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, site),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _sign(subject, public_key, issuer, issuer_key, days: int, extensions):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _san(hosts: Iterable[str]):
    from cryptography import x509

    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_site(out: Path, site: str, hosts: list[str], clients: list[str], days: int = 825) -> list[Path]:
    """Write ca.pem/ca.key, server.pem/server.key and <client>.pem/<client>.key under `out`.

    An existing CA in `out` is reused (so more clients can be added later); returns the files written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = Path(out)
    written = []
    ca_cert_path, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = _key()
        ca_name = _name(f"{site} edgeinfer CA", site)
        ca_cert = _sign(ca_name, ca_key.public_key(), ca_name, ca_key, days * 4, [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                           key_encipherment=False, data_encipherment=False, key_agreement=False,
                           encipher_only=False, decipher_only=False), True),
        ])
        _write(ca_key_path, _pem_key(ca_key), private=True)
        _write(ca_cert_path, _pem_cert(ca_cert))
        written += [ca_cert_path, ca_key_path]

    def leaf(common_name: str, usage, alt_names) -> tuple[bytes, bytes]:
        key = _key()
        exts = [(x509.BasicConstraints(ca=False, path_length=None), True), (x509.ExtendedKeyUsage([usage]), False)]
        if alt_names:
            exts.append((_san(alt_names), False))
        cert = _sign(_name(common_name, site), key.public_key(), ca_cert.subject, ca_key, days, exts)
        return _pem_cert(cert), _pem_key(key)

    if hosts:
        cert, key = leaf(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, hosts)
        _write(out / "server.pem", cert)
        _write(out / "server.key", key, private=True)
        written += [out / "server.pem", out / "server.key"]
    for name in clients:
        cert, key = leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
        _write(out / f"{name}.pem", cert)
        _write(out / f"{name}.key", key, private=True)
        written += [out / f"{name}.pem", out / f"{name}.key"]
    return written

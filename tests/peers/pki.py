#!/usr/bin/env python3
"""A throwaway X.509 PKI for the mutual-TLS tests, made with `cryptography` (independent of the filter).

    python tests/peers/pki.py <dir>     # writes the PEM files, prints {client: x5t#S256} as JSON

Into a directory it writes (all TEST-ONLY, EC P-256, valid from an hour ago for a day):

  ca.pem / ca.key.pem                  the test CA
  server.pem / server.key.pem          for 127.0.0.1 and localhost (IP and DNS SANs), signed by the CA
  <client>.pem / <client>.key.pem      client certificates (extended key usage clientAuth), see CLIENTS:
      planner     signed by the CA, URI SAN spiffe://example.org/ns/agents/sa/planner
      executor    signed by the CA, URI SAN spiffe://example.org/ns/agents/sa/executor
      evil        signed by the CA, URI SAN spiffe://evil.example/x (another trust domain)
      nosan       signed by the CA, no subject alternative name at all
      selfsigned  NOT from the CA: self-signed, claiming the planner's SPIFFE ID

`x5t_s256(cert)` is RFC 8705 §3.1's confirmation value: base64url (no padding) of the SHA-256 of
the certificate's DER encoding; `Pki.thumbprints()` gives it for every client certificate.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "example.org"
PLANNER = f"spiffe://{TRUST_DOMAIN}/ns/agents/sa/planner"
EXECUTOR = f"spiffe://{TRUST_DOMAIN}/ns/agents/sa/executor"
EVIL = "spiffe://evil.example/x"

# name → (URI SAN or None, signed by the CA?)
CLIENTS: dict[str, tuple[str | None, bool]] = {
    "planner": (PLANNER, True),
    "executor": (EXECUTOR, True),
    "evil": (EVIL, True),
    "nosan": (None, True),
    "selfsigned": (PLANNER, False),
}


def x5t_s256(cert: x509.Certificate | bytes) -> str:
    """RFC 8705 `x5t#S256`: base64url(SHA-256(DER)), no padding. `cert`: a certificate, PEM or DER bytes."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----") \
            else x509.load_der_x509_certificate(cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class Client:
    name: str
    cert: Path
    key: Path
    uri: str | None          # the URI SAN, if any
    from_ca: bool
    x5t_s256: str            # RFC 8705 confirmation value of `cert`

    def ssl_context(self, ca: Path) -> ssl.SSLContext:
        """A client context presenting this certificate and trusting `ca` for the server."""
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, Client] = field(default_factory=dict)

    def thumbprints(self) -> dict[str, str]:
        """client name → its x5t#S256."""
        return {name: c.x5t_s256 for name, c in self.clients.items()}

    def context(self, client: str | None) -> ssl.SSLContext:
        """A client TLS context trusting the CA, presenting `client`'s certificate (None: none)."""
        if client is None:
            return ssl.create_default_context(cafile=str(self.ca_cert))
        return self.clients[client].ssl_context(self.ca_cert)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tessera tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path = path.with_suffix(".key.pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key_path


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool,
          sans: list[x509.GeneralName], eku: list | None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def generate(directory: str | Path) -> Pki:
    """Write a fresh CA, server certificate and the CLIENTS into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Tessera test CA")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True, sans=[], eku=None)
    ca_cert, ca_key_path = _write(d / "ca.pem", ca_key, ca)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(_name("localhost"), server_key, ca_name, ca_key, ca=False,
                   sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    server_cert, server_key_path = _write(d / "server.pem", server_key, server)

    clients: dict[str, Client] = {}
    for name, (uri, from_ca) in CLIENTS.items():
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        sans = [x509.UniformResourceIdentifier(uri)] if uri else []
        cert = _cert(subject, key, ca_name if from_ca else subject, ca_key if from_ca else key,
                     ca=False, sans=sans, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
        cert_path, key_path = _write(d / f"{name}.pem", key, cert)
        clients[name] = Client(name, cert_path, key_path, uri, from_ca, x5t_s256(cert))
    return Pki(d, ca_cert, ca_key_path, server_cert, server_key_path, clients)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(generate(argv[1]).thumbprints(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

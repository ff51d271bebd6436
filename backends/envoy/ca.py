"""The certificate authority of a trust domain: SPIFFE identities (X.509 SVIDs) for the sidecars.

    ca = Authority.generate("cluster.local")              # or Authority.load(cert_pem, key_pem)
    svid = ca.issue("spiffe://cluster.local/ns/shop/sa/web", ttl_s=3600)
    svid.cert, svid.key                                     # PEM: the leaf, then the CA; its key
    ca.bundle                                               # PEM: what a sidecar trusts

A workload certificate carries exactly one URI subject alternative name, its SPIFFE ID, and may
authenticate both ends of a connection (serverAuth and clientAuth). An existing CA (cert-manager,
SPIRE, Istio's) can sign instead of a generated one: `load` takes its certificate and key, and a
chain of intermediates to hand out with every SVID.

Secrets go to Envoy over SDS (`secret`, `bundle_secret`): over ADS from `anyplane serve`, or from
files Envoy watches (`write_sds`), replaced atomically when they rotate.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from anyplane.ir.flow import is_spiffe_id

from .normal import TYPE

SECRET = TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret"
DEFAULT_TTL_S = 3600


class CaError(ValueError):
    """A CA that cannot sign as asked (the message says why)."""


def trust_domain_of(spiffe_id: str) -> str:
    """`spiffe://cluster.local/ns/a/sa/b` -> `cluster.local`."""
    return spiffe_id[len("spiffe://"):].split("/", 1)[0]


def bundle_name(trust_domain: str) -> str:
    """The SDS name of a trust domain's bundle (the CA certificates a sidecar trusts)."""
    return f"spiffe://{trust_domain}"


@dataclass(frozen=True)
class Svid:
    """One identity's certificate chain and key (PEM), and when the certificate expires."""

    spiffe_id: str
    cert: bytes
    key: bytes
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Authority:
    """Signs SVIDs of one trust domain."""

    def __init__(self, trust_domain: str, cert: x509.Certificate, key, chain: tuple[x509.Certificate, ...] = ()):
        self.trust_domain = trust_domain
        self.cert = cert
        self.key = key
        self.chain = chain

    @classmethod
    def generate(cls, trust_domain: str, days: int = 365) -> "Authority":
        """A new self-signed CA for the trust domain (EC P-256)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "anyplane"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"anyplane CA {trust_domain}")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                    bundle_name(trust_domain))]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(trust_domain, cert, key)

    @classmethod
    def load(cls, trust_domain: str, cert_pem: bytes, key_pem: bytes, chain_pem: bytes = b"") -> "Authority":
        """An existing CA: its certificate and key (PEM), and the intermediates above it, if any."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
            chain = tuple(x509.load_pem_x509_certificates(chain_pem)) if chain_pem.strip() else ()
        except ValueError as exc:
            raise CaError(f"cannot read the CA: {exc}") from None
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaError("the CA certificate is not a CA (basicConstraints CA:TRUE)")
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise CaError("the CA key does not belong to the CA certificate")
        return cls(trust_domain, cert, key, chain)

    @classmethod
    def of(cls, trust_domain: str, ca: tuple | None) -> "Authority":
        """The CA given as PEM (cert, key, chain), or a new one for the trust domain."""
        return cls.load(trust_domain, *ca[:3]) if ca else cls.generate(trust_domain)

    @property
    def bundle(self) -> bytes:
        """The certificates a sidecar of the trust domain trusts (the root of the chain)."""
        upper = (self.cert, *self.chain)
        root = next((c for c in upper if _self_signed(c)), upper[-1])
        return root.public_bytes(serialization.Encoding.PEM)

    def issue(self, spiffe_id: str, ttl_s: int = DEFAULT_TTL_S, not_before: datetime.datetime | None = None) -> Svid:
        """A new key and certificate for one SPIFFE ID of this trust domain, valid `ttl_s` seconds."""
        if not is_spiffe_id(spiffe_id) or trust_domain_of(spiffe_id) != self.trust_domain:
            raise CaError(f"'{spiffe_id}' is not a SPIFFE ID of the trust domain {self.trust_domain}")
        if ttl_s <= 0:
            raise CaError("a certificate lives a positive number of seconds")
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _now() - datetime.timedelta(seconds=60)  # clocks of peers differ a little
        end = start + datetime.timedelta(seconds=ttl_s + (60 if not_before is None else 0))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "anyplane")]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                             crl_sign=False, content_commitment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                               critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        # The leaf, then every CA above it but the root (which each peer has in its bundle).
        pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain)
                        if not _self_signed(c))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return Svid(spiffe_id, pem, key_pem, end)

    def pem(self) -> tuple[bytes, bytes]:
        """The CA's certificate and key (PEM), to keep beside the sidecars' files or load again."""
        return (self.cert.public_bytes(serialization.Encoding.PEM),
                self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def secret(svid: Svid) -> dict:
    """An SDS Secret with an identity's certificate chain and key, named after its SPIFFE ID."""
    return {"@type": SECRET, "name": svid.spiffe_id, "tls_certificate": {
        "certificate_chain": {"inline_bytes": _b64(svid.cert)}, "private_key": {"inline_bytes": _b64(svid.key)}}}


def bundle_secret(trust_domain: str, bundle: bytes) -> dict:
    """An SDS Secret with the trust domain's CA certificates (a validation context)."""
    return {"@type": SECRET, "name": bundle_name(trust_domain),
            "validation_context": {"trusted_ca": {"inline_bytes": _b64(bundle)}}}


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def keep(directory: str | os.PathLike, authority: "Authority") -> None:
    """Write a CA made here into a directory (ca.pem, and ca.key readable by its owner alone), each file
    replaced atomically, so that the next start loads it rather than making another."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = authority.pem()
    for name, data, mode in (("ca.key", key, 0o600), ("ca.pem", cert, 0o644)):
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, d / name)


SDS_CERT_FILE = "cert.yaml"
SDS_BUNDLE_FILE = "bundle.yaml"


def write_sds(directory: str | os.PathLike, svid: Svid, trust_domain: str, bundle: bytes) -> None:
    """A sidecar's two SDS files (its identity, the trust bundle), each replaced atomically: Envoy
    watches the directory and loads a rotated certificate without dropping a connection."""
    import json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, resource in ((SDS_CERT_FILE, secret(svid)), (SDS_BUNDLE_FILE, bundle_secret(trust_domain, bundle))):
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.")
        with os.fdopen(fd, "w") as f:
            json.dump({"resources": [resource]}, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, d / name)

"""The area CA: X.509 certificates and TLS contexts for mutual TLS inside one area.

The broker's HTTP API (and later AMQP over TLS) authenticates its peers by
client certificates issued by one CA per area (docs: DESIGN.md, "Transport
identity"). The peer's role and agency are carried in the certificate as SAN
URIs, ``urn:backa:role:<role>`` and ``urn:backa:agency:<agency>``, and read back
by :func:`peer_identity` once the TLS handshake has verified the chain.

Keys are ECDSA P-256 with SHA-256 signatures, not Ed25519: RabbitMQ/Erlang and
browsers handle P-256 reliably. Issuing is pure: the caller passes ``now`` and
may pass the serial number; nothing here reads the clock or touches files
except the two ``*_ssl_context`` functions, which read the PEM files they are
given. Every certificate's ``notBefore`` is :data:`CLOCK_SKEW` before ``now``,
so that a peer whose clock runs a little behind still accepts a fresh one.

This module must never:

* write a private key unencrypted unless the caller passed ``passphrase=None``
  explicitly (:func:`key_to_pem` has no default passphrase, and refuses ``b""``);
* let OpenSSL prompt on a terminal for a passphrase (a missing or wrong one is a
  :class:`~keys.errors.KeyStoreError`);
* trust anything but the area CA (no system trust store is loaded), or accept a
  peer without a certificate;
* put a personnummer in a certificate: under TLS 1.2 client certificates cross
  the network in clear, and certificates end up in logs.

Errors defined here, under the root of ``keys.errors`` (which should list them too)::

    KeysError
    ├── CertificateRoleError     certificate_role     403  no, unknown or ambiguous role URI
    └── CertificateRequestError  certificate_request  400  refused to issue (bad name, role, dates)

A missing, corrupt or wrongly protected key or certificate file raises
``KeyStoreError``; the foreign exception is chained, never swallowed.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.errors import KeysError, KeyStoreError

__all__ = [
    "AGENCY_URI_PREFIX",
    "CLOCK_SKEW",
    "ROLE_URI_PREFIX",
    "CertificateRequestError",
    "CertificateRoleError",
    "Issued",
    "PeerIdentity",
    "Role",
    "cert_to_pem",
    "client_ssl_context",
    "create_ca",
    "issue_client_cert",
    "issue_server_cert",
    "key_to_pem",
    "load_cert_pem",
    "load_key_pem",
    "peer_identity",
    "peer_identity_from_der",
    "server_ssl_context",
]

ROLE_URI_PREFIX: Final = "urn:backa:role:"
AGENCY_URI_PREFIX: Final = "urn:backa:agency:"

#: How far before ``now`` every certificate's validity starts.
CLOCK_SKEW: Final = timedelta(minutes=5)

# The same patterns as schemas.common.AreaId / AgencyId / StaffId.
_AREA_OR_AGENCY = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_PERSON_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
# A personnummer or samordningsnummer in any of its written forms (10 or 12 digits).
_LOOKS_LIKE_PERSONNUMMER = re.compile(r"\d{6}(?:\d{2})?[-+]?\d{4}")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CN_MAX = 64  # ub-common-name, RFC 5280 appendix A
_DNS_NAME_MAX = 253  # RFC 1035 2.3.4, without the trailing dot

# TLS 1.2 only with forward secrecy and an AEAD; TLS 1.3 suites are all fine as they are.
_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"


class CertificateRoleError(KeysError, ValueError):
    """A peer certificate carries no, an unknown or more than one role (or agency) URI."""

    code = "certificate_role"
    http_status = 403


class CertificateRequestError(KeysError, ValueError):
    """A certificate was not issued: a name, role, agency or validity period is unacceptable."""

    code = "certificate_request"
    http_status = 400


class Role(StrEnum):
    """What a certificate's holder may be: the value of its ``urn:backa:role:`` URI."""

    ADAPTER = "adapter"
    SECURITY_OFFICER = "security_officer"
    OPERATOR = "operator"
    BROKER = "broker"


_PERSON_ROLES: Final = frozenset({Role.SECURITY_OFFICER, Role.OPERATOR})


@dataclass(frozen=True)
class Issued:
    """A private key and the certificate issued for it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class PeerIdentity:
    """Who a verified peer certificate says its holder is."""

    role: Role
    agency: str | None
    common_name: str
    serial: int
    area: str | None = None


# --- issuing ----------------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise CertificateRequestError("now must be timezone-aware")
    return now.astimezone(UTC)


def _validity(now: datetime, valid_days: int) -> tuple[datetime, datetime]:
    if valid_days < 1:
        raise CertificateRequestError(f"valid_days must be at least 1, got {valid_days}")
    start = _utc(now)
    return start - CLOCK_SKEW, start + timedelta(days=valid_days)


def _area_id(area: str) -> str:
    if not _AREA_OR_AGENCY.fullmatch(area):
        raise CertificateRequestError(f"area {area!r} is not a valid area id")
    return area


def _serial(serial: int | None) -> int:
    if serial is None:
        return x509.random_serial_number()
    # RFC 5280 4.1.2.2: positive, at most 20 octets.
    if not 0 < serial < 2**159:
        raise CertificateRequestError("serial must be positive and below 2**159")
    return serial


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(
    *, area: str, now: datetime, valid_days: int = 3650, serial: int | None = None
) -> Issued:
    """Make a new self-signed area CA (CN "Backa area CA <area>", O=<area>, path length 0)."""
    area = _area_id(area)
    not_before, not_after = _validity(now, valid_days)
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"Backa area CA {area}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, area),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial(serial))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key=key, cert=cert)


def _ca_area(ca: Issued) -> str:
    """The area of a CA, after checking that ``ca`` really is a CA whose key matches."""
    try:
        constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertificateRequestError("the issuing certificate is not a CA")
    if ca.cert.public_key() != ca.key.public_key():
        raise CertificateRequestError("the CA key does not belong to the CA certificate")
    areas = ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(areas) != 1 or not isinstance(areas[0].value, str):
        raise CertificateRequestError("the CA certificate names no single area (O)")
    return areas[0].value


def _leaf(
    ca: Issued,
    *,
    subject: x509.Name,
    san: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: datetime,
    valid_days: int,
    serial: int | None,
) -> Issued:
    not_before, not_after = _validity(now, valid_days)
    current = _utc(now)
    if not ca.cert.not_valid_before_utc <= current <= ca.cert.not_valid_after_utc:
        raise CertificateRequestError("the CA certificate is not valid at the given time")
    if not_after > ca.cert.not_valid_after_utc:
        raise CertificateRequestError(
            f"a certificate valid for {valid_days} days would outlive the CA "
            f"(CA expires {ca.cert.not_valid_after_utc.isoformat()})"
        )
    key = _new_key()
    public = key.public_key()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(_serial(serial))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key=key, cert=cert)


def _hostname(name: str) -> str:
    host = name.lower().rstrip(".")
    labels = host.split(".")
    if len(host) > _DNS_NAME_MAX or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise CertificateRequestError(f"{name!r} is not a valid DNS name (A-labels only)")
    return host


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise CertificateRequestError(f"{text!r} is not an IP address") from exc


def issue_server_cert(
    ca: Issued,
    *,
    hostnames: Sequence[str],
    ips: Sequence[str] = (),
    now: datetime,
    valid_days: int = 825,
    serial: int | None = None,
) -> Issued:
    """Issue the broker's TLS server certificate for the given DNS names and IP addresses."""
    if isinstance(hostnames, str) or isinstance(ips, str):
        raise CertificateRequestError("hostnames and ips must be sequences of strings")
    area = _ca_area(ca)
    hosts = [_hostname(h) for h in hostnames]
    addresses = [_ip(i) for i in ips]
    if not hosts and not addresses:
        raise CertificateRequestError("a server certificate needs at least one hostname or IP")
    common_name = hosts[0] if hosts else str(addresses[0])
    if len(common_name) > _CN_MAX:
        common_name = common_name[:_CN_MAX]  # the SAN, not the CN, is what clients check
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    san += [x509.IPAddress(a) for a in addresses]
    san.append(x509.UniformResourceIdentifier(ROLE_URI_PREFIX + Role.BROKER))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, area),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, Role.BROKER.value),
        ]
    )
    return _leaf(
        ca,
        subject=subject,
        san=san,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        now=now,
        valid_days=valid_days,
        serial=serial,
    )


def _common_name(common_name: str, role: Role) -> str:
    if _LOOKS_LIKE_PERSONNUMMER.search(common_name):
        # Client certificates travel in clear under TLS 1.2 and are logged: no personnummer.
        raise CertificateRequestError("common_name must not contain a personnummer")
    if role in _PERSON_ROLES:
        if not _PERSON_ID.fullmatch(common_name):
            raise CertificateRequestError(
                f"a {role} certificate needs a person id (A-Z a-z 0-9 . _ @ -, at most 64) "
                f"as common_name, got {common_name!r}"
            )
    elif (
        not 0 < len(common_name) <= _CN_MAX
        or not common_name.isprintable()
        or common_name != common_name.strip()
    ):
        raise CertificateRequestError(
            f"common_name must be 1 to {_CN_MAX} printable characters without outer spaces"
        )
    return common_name


def issue_client_cert(
    ca: Issued,
    *,
    common_name: str,
    role: Role,
    agency: str | None,
    area: str,
    now: datetime,
    valid_days: int = 825,
    serial: int | None = None,
) -> Issued:
    """Issue a client certificate carrying ``role`` (and ``agency``) as SAN URIs.

    An adapter certificate must name its agency; a broker certificate must not
    (the broker belongs to no agency); security officers and operators are
    people, so ``common_name`` is their person id and the agency is optional.
    """
    role = Role(role)
    area = _area_id(area)
    ca_area = _ca_area(ca)
    if area != ca_area:
        raise CertificateRequestError(f"area {area!r} is not the CA's area {ca_area!r}")
    if role is Role.ADAPTER and agency is None:
        raise CertificateRequestError("an adapter certificate needs an agency")
    if role is Role.BROKER and agency is not None:
        raise CertificateRequestError("a broker certificate names no agency")
    if agency is not None and not _AREA_OR_AGENCY.fullmatch(agency):
        raise CertificateRequestError(f"agency {agency!r} is not a valid agency id")
    common_name = _common_name(common_name, role)
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role)]
    if agency is not None:
        san.append(x509.UniformResourceIdentifier(AGENCY_URI_PREFIX + agency))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, area),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
        ]
    )
    return _leaf(
        ca,
        subject=subject,
        san=san,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        now=now,
        valid_days=valid_days,
        serial=serial,
    )


# --- reading a peer ---------------------------------------------------------------------------


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def peer_identity(cert: x509.Certificate) -> PeerIdentity:
    """Read role, agency and common name from a certificate the TLS handshake has verified.

    This does not verify the certificate: call it only on the peer certificate
    of an established mutual-TLS connection whose context trusts the area CA.
    Exactly one role URI and at most one agency URI are accepted; an adapter
    must name an agency and the broker must not.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateRoleError("the certificate has no subject alternative names") from exc
    except ValueError as exc:  # a malformed extension surfaces only on access
        raise CertificateRoleError("the certificate's extensions cannot be parsed") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    roles = [u.removeprefix(ROLE_URI_PREFIX) for u in uris if u.startswith(ROLE_URI_PREFIX)]
    agencies = [u.removeprefix(AGENCY_URI_PREFIX) for u in uris if u.startswith(AGENCY_URI_PREFIX)]
    if len(roles) != 1:
        raise CertificateRoleError(f"the certificate has {len(roles)} role URIs, not one")
    try:
        role = Role(roles[0])
    except ValueError as exc:
        raise CertificateRoleError(f"unknown role {roles[0]!r}") from exc
    if len(agencies) > 1:
        raise CertificateRoleError(f"the certificate has {len(agencies)} agency URIs")
    agency = agencies[0] if agencies else None
    if agency is not None and not _AREA_OR_AGENCY.fullmatch(agency):
        raise CertificateRoleError("the certificate's agency URI is malformed")
    if role is Role.ADAPTER and agency is None:
        raise CertificateRoleError("an adapter certificate without an agency URI")
    if role is Role.BROKER and agency is not None:
        raise CertificateRoleError("a broker certificate with an agency URI")
    common_name = _single_attribute(cert, NameOID.COMMON_NAME)
    if common_name is None:
        raise CertificateRoleError("the certificate has no single common name")
    return PeerIdentity(
        role=role,
        agency=agency,
        common_name=common_name,
        serial=cert.serial_number,
        area=_single_attribute(cert, NameOID.ORGANIZATION_NAME),
    )


def peer_identity_from_der(der: bytes | None) -> PeerIdentity:
    """:func:`peer_identity` of ``ssl.SSLObject.getpeercert(binary_form=True)``."""
    if not der:
        raise CertificateRoleError("the peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateRoleError("the peer certificate cannot be parsed") from exc
    return peer_identity(cert)


# --- PEM --------------------------------------------------------------------------------------


def key_to_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of ``key``: encrypted under ``passphrase``, in clear only when it is None."""
    encryption: serialization.KeySerializationEncryption
    if passphrase is None:
        encryption = serialization.NoEncryption()
    elif not passphrase:
        raise KeyStoreError("an empty passphrase is not a passphrase; pass None to mean none")
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_key_pem(data: bytes, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    """Load a PEM private key written by :func:`key_to_pem`; KeyStoreError if it cannot be."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        # TypeError: passphrase missing, or given for an unencrypted key.
        raise KeyStoreError(
            "the private key cannot be loaded (corrupt or wrong passphrase)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyStoreError("the private key is not an elliptic-curve key")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert_pem(data: bytes) -> x509.Certificate:
    """Load one PEM certificate; KeyStoreError if it is not one."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KeyStoreError("the certificate cannot be loaded") from exc


# --- TLS contexts -----------------------------------------------------------------------------


def _password(passphrase: bytes | None) -> Callable[[], bytes]:
    def supply() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
        if passphrase is None:
            raise KeyStoreError("the private key is encrypted and no passphrase was given")
        return passphrase

    return supply


def _harden(
    context: ssl.SSLContext,
    *,
    cert_file: Path,
    key_file: Path,
    ca_file: Path,
    passphrase: bytes | None,
) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # RFC 5280 conformance: refuses e.g. a CA without critical basicConstraints.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        # The area CA is the only trust anchor: no system store is ever loaded.
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise KeyStoreError(f"cannot load the CA certificate {ca_file}") from exc
    try:
        context.load_cert_chain(
            certfile=str(cert_file), keyfile=str(key_file), password=_password(passphrase)
        )
    except KeyStoreError:
        raise
    except (OSError, ValueError) as exc:
        raise KeyStoreError(
            f"cannot load the certificate {cert_file} with its key {key_file} "
            "(missing, mismatched, or wrong passphrase)"
        ) from exc
    return context


def server_ssl_context(
    *, cert_file: Path, key_file: Path, ca_file: Path, passphrase: bytes | None
) -> ssl.SSLContext:
    """A TLS 1.2+ server context that requires a client certificate from the area CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return _harden(
        context, cert_file=cert_file, key_file=key_file, ca_file=ca_file, passphrase=passphrase
    )


def client_ssl_context(
    *, cert_file: Path, key_file: Path, ca_file: Path, passphrase: bytes | None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that checks the host name and trusts only the area CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    return _harden(
        context, cert_file=cert_file, key_file=key_file, ca_file=ca_file, passphrase=passphrase
    )

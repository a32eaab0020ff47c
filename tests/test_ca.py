"""The area CA: certificate shapes, peer identity, PEM keys and real mutual-TLS handshakes."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.ca import (
    CLOCK_SKEW,
    CertificateRequestError,
    CertificateRoleError,
    Issued,
    PeerIdentity,
    Role,
    cert_to_pem,
    client_ssl_context,
    create_ca,
    issue_client_cert,
    issue_server_cert,
    key_to_pem,
    load_cert_pem,
    load_key_pem,
    peer_identity,
    peer_identity_from_der,
    server_ssl_context,
)
from keys.errors import KeysError, KeyStoreError

AREA = "orebro-lan"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PASSPHRASE = b"correct horse battery staple"
TIMEOUT = 5.0

# What a refused handshake may look like on the client: an alert (SSLError), a reset,
# or, under TLS 1.3, the server closing the connection after the client thought it was done.
REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


# --- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    """One party's PEM files: its certificate, its encrypted key and the CA it trusts."""

    cert: Path
    key: Path
    ca: Path


def write_files(directory: Path, name: str, issued: Issued, ca: Issued) -> Files:
    """Write ``issued`` with its key encrypted under PASSPHRASE, beside the CA certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    files = Files(
        cert=directory / f"{name}.crt", key=directory / f"{name}.key", ca=directory / "ca.crt"
    )
    files.cert.write_bytes(cert_to_pem(issued.cert))
    files.key.write_bytes(key_to_pem(issued.key, PASSPHRASE))
    files.ca.write_bytes(cert_to_pem(ca.cert))
    return files


def server_context(files: Files) -> ssl.SSLContext:
    """The server side's context from its files."""
    return server_ssl_context(
        cert_file=files.cert, key_file=files.key, ca_file=files.ca, passphrase=PASSPHRASE
    )


def client_context(files: Files, tls_max: ssl.TLSVersion) -> ssl.SSLContext:
    """The client side's context from its files, capped at ``tls_max``."""
    context = client_ssl_context(
        cert_file=files.cert, key_file=files.key, ca_file=files.ca, passphrase=PASSPHRASE
    )
    context.maximum_version = tls_max
    return context


def handmade_client_cert(ca: Issued, uris: list[str], *, now: datetime) -> Issued:
    """A client certificate signed by ``ca`` with exactly the given SAN URIs (none: no SAN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "handmade")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=False)
    return Issued(key=key, cert=builder.sign(ca.key, hashes.SHA256()))


@dataclass
class Server:
    """A running mTLS echo server: its port and what its handler saw."""

    port: int
    context: ssl.SSLContext
    identities: list[PeerIdentity] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)


@contextlib.asynccontextmanager
async def serving(context: ssl.SSLContext) -> AsyncIterator[Server]:
    """Serve on 127.0.0.1: answer each line with the peer's role and agency, or 403."""
    state = Server(port=0, context=context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.handlers.add(task)
        try:
            await asyncio.wait_for(reader.readline(), TIMEOUT)
            ssl_object: ssl.SSLObject = writer.get_extra_info("ssl_object")
            state.versions.append(ssl_object.version())
            try:
                identity = peer_identity_from_der(ssl_object.getpeercert(binary_form=True))
            except CertificateRoleError as exc:
                writer.write(f"{exc.http_status} {exc.code}\n".encode())
            else:
                state.identities.append(identity)
                writer.write(f"{identity.role} {identity.agency}\n".encode())
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(*REFUSED):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        if state.handlers:
            await asyncio.wait_for(asyncio.gather(*state.handlers), TIMEOUT)


async def exchange(port: int, context: ssl.SSLContext) -> bytes:
    """Connect, send one line and return the answer line (b"" when the server hung up)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context), TIMEOUT
    )
    try:
        writer.write(b"hello\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(*REFUSED):
            await writer.wait_closed()


async def assert_refused(server: Server, context: ssl.SSLContext, reason: str) -> None:
    """The connection fails (in the handshake, or at the first read under TLS 1.3) for reason."""
    refusal = server_refusal(server.context, context)
    assert reason in str(refusal)
    try:
        answer = await exchange(server.port, context)
    except REFUSED:
        answer = b""
    assert answer == b""
    assert server.identities == []


def server_refusal(server_side: ssl.SSLContext, client_side: ssl.SSLContext) -> ssl.SSLError:
    """Run the same handshake in memory and return the server's reason for refusing it.

    Over a socket the client sees only a reset or an end of file; in memory the
    server's own error says why, so each refusal test can check it was the right one.
    """
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_side.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    server = server_side.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    raise AssertionError("the server accepted the handshake")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def real_now() -> datetime:
    """The wall clock: OpenSSL checks validity against it during a real handshake."""
    return datetime.now(UTC)


@pytest.fixture
def area_ca(real_now: datetime) -> Issued:
    """The area CA of the handshake tests."""
    return create_ca(area=AREA, now=real_now)


@pytest.fixture
def server_files(tmp_path: Path, area_ca: Issued, real_now: datetime) -> Files:
    """The broker's server certificate for localhost and 127.0.0.1, on disk."""
    issued = issue_server_cert(area_ca, hostnames=["localhost"], ips=["127.0.0.1"], now=real_now)
    return write_files(tmp_path / "server", "server", issued, area_ca)


@pytest.fixture
def client_files(tmp_path: Path, area_ca: Issued, real_now: datetime) -> Callable[[Issued], Files]:
    """A writer of client files that trust the area CA."""
    counter = iter(range(1000))

    def write(issued: Issued) -> Files:
        return write_files(tmp_path / f"client{next(counter)}", "client", issued, area_ca)

    return write


@pytest.fixture(params=[ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def tls_max(request: pytest.FixtureRequest) -> ssl.TLSVersion:
    """The highest TLS version the client offers: refusals surface differently in each."""
    version: ssl.TLSVersion = request.param
    return version


# --- real handshakes --------------------------------------------------------------------------


async def test_mutual_tls_gives_the_server_the_peer_role_and_agency(
    server_files: Files,
    client_files: Callable[[Issued], Files],
    area_ca: Issued,
    real_now: datetime,
    tls_max: ssl.TLSVersion,
) -> None:
    """A real handshake with encrypted keys on disk lets the server read role and agency."""
    adapter = issue_client_cert(
        area_ca,
        common_name="adapter-bvc",
        role=Role.ADAPTER,
        agency="region-bvc",
        area=AREA,
        now=real_now,
    )
    async with serving(server_context(server_files)) as server:
        answer = await exchange(server.port, client_context(client_files(adapter), tls_max))
    assert answer == b"adapter region-bvc\n"
    assert server.identities == [
        PeerIdentity(
            role=Role.ADAPTER,
            agency="region-bvc",
            common_name="adapter-bvc",
            serial=adapter.cert.serial_number,
            area=AREA,
        )
    ]
    expected = "TLSv1.3" if tls_max is ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
    assert server.versions == [expected]


async def test_client_cert_from_another_ca_is_refused(
    server_files: Files,
    tmp_path: Path,
    real_now: datetime,
    tls_max: ssl.TLSVersion,
) -> None:
    """A client certificate from a foreign CA, even one with the same name, fails the handshake."""
    impostor_ca = create_ca(area=AREA, now=real_now)
    impostor = issue_client_cert(
        impostor_ca,
        common_name="adapter-bvc",
        role=Role.ADAPTER,
        agency="region-bvc",
        area=AREA,
        now=real_now,
    )
    # The impostor trusts the real CA, so only the server's check can stop it.
    files = write_files(tmp_path / "impostor", "client", impostor, impostor_ca)
    files = Files(cert=files.cert, key=files.key, ca=server_files.ca)
    async with serving(server_context(server_files)) as server:
        await assert_refused(
            server, client_context(files, tls_max), "unable to get local issuer certificate"
        )


async def test_expired_client_cert_is_refused(
    server_files: Files,
    client_files: Callable[[Issued], Files],
    area_ca: Issued,
    real_now: datetime,
    tls_max: ssl.TLSVersion,
) -> None:
    """A client certificate that expired yesterday fails the handshake."""
    issued_at = real_now - timedelta(days=3)
    ca = create_ca(area=AREA, now=issued_at)
    expired = issue_client_cert(
        ca,
        common_name="op-1",
        role=Role.OPERATOR,
        agency=None,
        area=AREA,
        now=issued_at,
        valid_days=1,
    )
    server_side = issue_server_cert(ca, hostnames=["localhost"], ips=["127.0.0.1"], now=real_now)
    client = write_files(server_files.ca.parent.parent / "expired", "client", expired, ca)
    server = write_files(
        server_files.ca.parent.parent / "expired-server", "server", server_side, ca
    )
    async with serving(server_context(server)) as running:
        await assert_refused(running, client_context(client, tls_max), "certificate has expired")


async def test_client_without_certificate_is_refused(
    server_files: Files, tls_max: ssl.TLSVersion
) -> None:
    """A client that trusts the CA but presents no certificate fails the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(server_files.ca))
    context.maximum_version = tls_max
    async with serving(server_context(server_files)) as server:
        await assert_refused(server, context, "peer did not return a certificate")


async def test_server_cert_is_refused_as_a_client_cert(
    server_files: Files,
    client_files: Callable[[Issued], Files],
    area_ca: Issued,
    real_now: datetime,
    tls_max: ssl.TLSVersion,
) -> None:
    """A certificate without the clientAuth usage (the broker's own) cannot log in as a client."""
    stolen = issue_server_cert(area_ca, hostnames=["localhost"], now=real_now)
    async with serving(server_context(server_files)) as server:
        await assert_refused(
            server, client_context(client_files(stolen), tls_max), "unsuitable certificate purpose"
        )


async def test_valid_cert_without_role_is_answered_403(
    server_files: Files,
    client_files: Callable[[Issued], Files],
    area_ca: Issued,
    real_now: datetime,
) -> None:
    """A certificate the CA signed but that names no role passes TLS and is refused by role."""
    roleless = handmade_client_cert(area_ca, [], now=real_now)
    files = client_files(roleless)
    async with serving(server_context(server_files)) as server:
        answer = await exchange(server.port, client_context(files, ssl.TLSVersion.TLSv1_3))
    assert answer == b"403 certificate_role\n"
    assert server.identities == []


async def test_client_refuses_a_server_from_another_ca(
    tmp_path: Path,
    server_files: Files,
    client_files: Callable[[Issued], Files],
    area_ca: Issued,
    real_now: datetime,
) -> None:
    """The client trusts only the area CA, so a server certified elsewhere fails verification."""
    other_ca = create_ca(area=AREA, now=real_now)
    fake_broker = issue_server_cert(
        other_ca, hostnames=["localhost"], ips=["127.0.0.1"], now=real_now
    )
    fake = write_files(tmp_path / "fake", "server", fake_broker, other_ca)
    fake = Files(cert=fake.cert, key=fake.key, ca=server_files.ca)  # it would accept our clients
    officer = issue_client_cert(
        area_ca,
        common_name="so-1",
        role=Role.SECURITY_OFFICER,
        agency=None,
        area=AREA,
        now=real_now,
    )
    context = client_context(client_files(officer), ssl.TLSVersion.TLSv1_3)
    async with serving(server_context(fake)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await exchange(server.port, context)
        assert server.identities == []


async def test_client_checks_the_server_hostname(
    tmp_path: Path,
    client_files: Callable[[Issued], Files],
    area_ca: Issued,
    real_now: datetime,
) -> None:
    """A server certificate for another name is refused even though the area CA issued it."""
    elsewhere = issue_server_cert(area_ca, hostnames=["broker.example"], now=real_now)
    files = write_files(tmp_path / "elsewhere", "server", elsewhere, area_ca)
    officer = issue_client_cert(
        area_ca, common_name="op-1", role=Role.OPERATOR, agency=None, area=AREA, now=real_now
    )
    context = client_context(client_files(officer), ssl.TLSVersion.TLSv1_3)
    async with serving(server_context(files)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            await exchange(server.port, context)


# --- contexts ---------------------------------------------------------------------------------


def test_contexts_require_certificates_and_trust_only_the_area_ca(server_files: Files) -> None:
    """Both contexts verify the peer, allow TLS 1.2 at the lowest and hold one trust anchor."""
    server = server_context(server_files)
    client = client_ssl_context(
        cert_file=server_files.cert,
        key_file=server_files.key,
        ca_file=server_files.ca,
        passphrase=PASSPHRASE,
    )
    for context in (server, client):
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
        assert [ca["subject"] for ca in context.get_ca_certs()] == [
            ((("commonName", f"Backa area CA {AREA}"),), (("organizationName", AREA),))
        ]
    assert client.check_hostname


@pytest.mark.parametrize("passphrase", [None, b"wrong"], ids=["none", "wrong"])
def test_context_with_bad_passphrase_raises_key_store_error(
    server_files: Files, passphrase: bytes | None
) -> None:
    """An encrypted key with a missing or wrong passphrase is a KeyStoreError, never a prompt."""
    with pytest.raises(KeyStoreError, match="passphrase"):
        server_ssl_context(
            cert_file=server_files.cert,
            key_file=server_files.key,
            ca_file=server_files.ca,
            passphrase=passphrase,
        )


def test_context_with_missing_file_raises_key_store_error(server_files: Files) -> None:
    """A missing CA file is a KeyStoreError that names the file."""
    missing = server_files.ca.parent / "absent.crt"
    with pytest.raises(KeyStoreError, match=r"absent\.crt"):
        server_ssl_context(
            cert_file=server_files.cert,
            key_file=server_files.key,
            ca_file=missing,
            passphrase=PASSPHRASE,
        )


# --- PEM --------------------------------------------------------------------------------------


def test_encrypted_key_cannot_be_loaded_without_its_passphrase() -> None:
    """An encrypted PEM key loads with its passphrase and with nothing else."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key_to_pem(key, PASSPHRASE)
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    for wrong in (None, b"not it"):
        with pytest.raises(KeyStoreError):
            load_key_pem(pem, wrong)
    assert load_key_pem(pem, PASSPHRASE).public_key() == key.public_key()


def test_key_is_written_in_clear_only_when_asked_with_none() -> None:
    """None writes plain PKCS#8; an empty passphrase is refused rather than taken as none."""
    key = ec.generate_private_key(ec.SECP256R1())
    assert key_to_pem(key, None).startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(KeyStoreError, match="empty passphrase"):
        key_to_pem(key, b"")


def test_certificate_pem_round_trips_and_junk_is_refused() -> None:
    """cert_to_pem and load_cert_pem are inverse; junk is a KeyStoreError."""
    ca = create_ca(area=AREA, now=NOW)
    assert load_cert_pem(cert_to_pem(ca.cert)) == ca.cert
    with pytest.raises(KeyStoreError):
        load_cert_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# --- certificate shapes -----------------------------------------------------------------------


def test_ca_certificate_shape() -> None:
    """The CA is self-signed P-256/SHA-256, CA:true with path length 0, signs certs and CRLs."""
    ca = create_ca(area=AREA, now=NOW, serial=42)
    cert = ca.cert
    cert.verify_directly_issued_by(cert)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.serial_number == 42
    assert cert.subject.rfc4514_string() == f"O={AREA},CN=Backa area CA {AREA}"
    assert cert.issuer == cert.subject
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())


def test_server_certificate_shape() -> None:
    """The server certificate has serverAuth, DNS and IP names, the broker role URI and an AKI."""
    ca = create_ca(area=AREA, now=NOW)
    server = issue_server_cert(
        ca, hostnames=["Broker.Example", "localhost"], ips=["127.0.0.1", "::1"], now=NOW, serial=7
    )
    cert = server.cert
    cert.verify_directly_issued_by(ca.cert)
    assert cert.serial_number == 7
    assert cert.not_valid_after_utc == NOW + timedelta(days=825)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:backa:role:broker"]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert peer_identity(cert).role is Role.BROKER


def test_client_certificate_shape() -> None:
    """The client certificate has clientAuth and the subject CN, O=area, OU=role."""
    ca = create_ca(area=AREA, now=NOW)
    client = issue_client_cert(
        ca,
        common_name="adapter-bup",
        role=Role.ADAPTER,
        agency="region-bup",
        area=AREA,
        now=NOW,
        valid_days=30,
    )
    cert = client.cert
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.rfc4514_string() == f"OU=adapter,O={AREA},CN=adapter-bup"
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:backa:role:adapter",
        "urn:backa:agency:region-bup",
    ]


def test_random_serials_differ() -> None:
    """Without an injected serial each certificate gets a fresh random one."""
    ca = create_ca(area=AREA, now=NOW)
    serials = {
        issue_client_cert(
            ca, common_name="op-1", role=Role.OPERATOR, agency=None, area=AREA, now=NOW
        ).cert.serial_number
        for _ in range(3)
    }
    assert len(serials) == 3


# --- peer identity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "agency", "common_name"),
    [
        (Role.ADAPTER, "kommun-orebro-skola", "adapter-skola"),
        (Role.SECURITY_OFFICER, None, "anna.svensson@orebro.se"),
        (Role.SECURITY_OFFICER, "polis-bergslagen", "so-4711"),
        (Role.OPERATOR, None, "op-1"),
        (Role.OPERATOR, "region-orebro", "op-2"),
        (Role.BROKER, None, "broker-1"),
    ],
    ids=["adapter", "officer", "officer-with-agency", "operator", "operator-with-agency", "broker"],
)
def test_peer_identity_reads_role_and_agency(
    role: Role, agency: str | None, common_name: str
) -> None:
    """Each role's client certificate reads back as the role, agency and name it was issued with."""
    ca = create_ca(area=AREA, now=NOW)
    issued = issue_client_cert(
        ca, common_name=common_name, role=role, agency=agency, area=AREA, now=NOW
    )
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    assert peer_identity_from_der(der) == PeerIdentity(
        role=role,
        agency=agency,
        common_name=common_name,
        serial=issued.cert.serial_number,
        area=AREA,
    )


@pytest.mark.parametrize(
    "uris",
    [
        [],
        ["urn:example:other"],
        ["urn:backa:role:adapter", "urn:backa:role:operator", "urn:backa:agency:region-bvc"],
        ["urn:backa:role:superuser"],
        ["urn:backa:role:adapter"],
        ["urn:backa:role:broker", "urn:backa:agency:region-bvc"],
        ["urn:backa:role:operator", "urn:backa:agency:a-1", "urn:backa:agency:b-2"],
        ["urn:backa:role:adapter", "urn:backa:agency:Not Valid"],
    ],
    ids=[
        "no-san",
        "no-role-uri",
        "two-roles",
        "unknown-role",
        "adapter-without-agency",
        "broker-with-agency",
        "two-agencies",
        "malformed-agency",
    ],
)
def test_cert_without_one_clear_role_raises_certificate_role_error(uris: list[str]) -> None:
    """A certificate without exactly one known role (and a fitting agency) has no identity."""
    ca = create_ca(area=AREA, now=NOW)
    cert = handmade_client_cert(ca, uris, now=NOW).cert
    with pytest.raises(CertificateRoleError) as caught:
        peer_identity(cert)
    assert caught.value.code == "certificate_role"
    assert caught.value.http_status == 403
    assert isinstance(caught.value, KeysError)


@pytest.mark.parametrize("der", [None, b"", b"\x30\x03\x02\x01\x01"], ids=["none", "empty", "junk"])
def test_peer_identity_from_der_refuses_missing_or_junk(der: bytes | None) -> None:
    """No peer certificate, or bytes that are not one, is a CertificateRoleError."""
    with pytest.raises(CertificateRoleError):
        peer_identity_from_der(der)


# --- refusals to issue ------------------------------------------------------------------------


def test_adapter_without_agency_is_refused() -> None:
    """An adapter certificate must say which agency it speaks for."""
    ca = create_ca(area=AREA, now=NOW)
    with pytest.raises(CertificateRequestError, match="needs an agency"):
        issue_client_cert(
            ca, common_name="adapter-x", role=Role.ADAPTER, agency=None, area=AREA, now=NOW
        )


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"role": Role.BROKER, "agency": "region-bvc"}, "names no agency"),
        ({"agency": "Region BVC"}, "not a valid agency id"),
        ({"area": "lidingo"}, "not the CA's area"),
        ({"area": "Örebro"}, "not a valid area id"),
        ({"common_name": "19121212-1212"}, "personnummer"),
        ({"common_name": "adapter 201212121212"}, "personnummer"),
        ({"role": Role.OPERATOR, "common_name": "Anna Svensson"}, "person id"),
        ({"common_name": ""}, "printable"),
        ({"common_name": "x" * 65}, "printable"),
        ({"now": datetime(2026, 3, 2, 9, 30)}, "timezone-aware"),  # noqa: DTZ001 - the point
        ({"valid_days": 0}, "at least 1"),
        ({"valid_days": 3651}, "outlive the CA"),
        ({"now": NOW - timedelta(days=1)}, "CA certificate is not valid"),
        ({"serial": 0}, "serial"),
    ],
    ids=[
        "broker-with-agency",
        "bad-agency",
        "other-area",
        "bad-area",
        "personnummer-cn",
        "personnummer-inside-cn",
        "officer-name-not-id",
        "empty-cn",
        "long-cn",
        "naive-now",
        "zero-days",
        "outlives-ca",
        "before-ca",
        "zero-serial",
    ],
)
def test_bad_client_certificate_requests_are_refused(
    changes: dict[str, object], match: str
) -> None:
    """Each unacceptable request is a CertificateRequestError that says what is wrong."""
    ca = create_ca(area=AREA, now=NOW)
    request: dict[str, object] = {
        "common_name": "adapter-bvc",
        "role": Role.ADAPTER,
        "agency": "region-bvc",
        "area": AREA,
        "now": NOW,
    }
    request.update(changes)
    with pytest.raises(CertificateRequestError, match=match):
        issue_client_cert(ca, **request)  # type: ignore[arg-type] # the table is heterogeneous


@pytest.mark.parametrize(
    ("hostnames", "ips", "match"),
    [
        ([], [], "at least one"),
        (["-bad.example"], [], "not a valid DNS name"),
        (["bröker.example"], [], "not a valid DNS name"),
        (["localhost"], ["999.1.1.1"], "not an IP address"),
        ("localhost", [], "sequences"),
    ],
    ids=["nothing", "leading-hyphen", "u-label", "bad-ip", "bare-string"],
)
def test_bad_server_certificate_requests_are_refused(
    hostnames: list[str], ips: list[str], match: str
) -> None:
    """A server certificate needs valid A-label host names or IP addresses."""
    ca = create_ca(area=AREA, now=NOW)
    with pytest.raises(CertificateRequestError, match=match):
        issue_server_cert(ca, hostnames=hostnames, ips=ips, now=NOW)


def test_issuing_with_a_leaf_as_ca_is_refused() -> None:
    """Only a CA certificate with its own key can issue."""
    ca = create_ca(area=AREA, now=NOW)
    leaf = issue_server_cert(ca, hostnames=["localhost"], now=NOW)
    with pytest.raises(CertificateRequestError, match="not a CA"):
        issue_server_cert(leaf, hostnames=["localhost"], now=NOW)
    other = create_ca(area=AREA, now=NOW)
    with pytest.raises(CertificateRequestError, match="does not belong"):
        issue_server_cert(Issued(key=other.key, cert=ca.cert), hostnames=["localhost"], now=NOW)

"""The signed area directory, and the area set-up that makes it: init, rotation, loading."""

from __future__ import annotations

import hashlib
import json
import random
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys import ca
from keys.area import load_area
from keys.directory import (
    ENTRY_SIGNATURE_CONTEXT,
    Directory,
    canonical_json,
    load_bundle,
    sign_entry,
    verify_entry,
    write_bundle,
)
from keys.envelope import open_envelope, seal
from keys.errors import DirectoryError, InvalidEnvelope, KeyStoreError
from keys.keystore import read_private_key
from keys.lookup import KeyLookup
from keys.material import (
    ed25519_from_seed,
    ed25519_public_bytes,
    ed25519_public_from_bytes,
    generate_hpke_keypair,
)
from keys.setup import (
    AreaLayout,
    init_area,
    load_agency_keys,
    load_broker_key,
    load_directory,
    load_pseudonym_key,
    rotate_agency,
)
from schemas.common import b64url_decode, b64url_encode
from schemas.directory import AgencyType, DirectoryBundle, DirectoryEntry, SignedDirectoryEntry
from schemas.envelope import Kind, LegalBasis, Purpose

DEMO = Path(__file__).resolve().parent.parent / "deploy" / "areas" / "demo.toml"
AREA = "test-area"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)
DAY = timedelta(days=1)
FAST_N = 2**4  # scrypt cost for tests only
PASSPHRASE = b"area passphrase for tests"
REPORTING_DUTY = LegalBasis(type="legal", ref="osl-10-28")  # anmälningsskyldighet


def _seed(label: str, n: int = 32) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


ROOT = ed25519_from_seed(_seed("root"))
OTHER_ROOT = ed25519_from_seed(_seed("other root"))


def _entry(
    agency: str = "skolan",
    kid: str = "kid-0001",
    *,
    valid_from: datetime = T0,
    seal_until: datetime | None = None,
    open_until: datetime | None = None,
    issued_at: datetime = T0,
    agency_type: AgencyType = AgencyType.SCHOOL,
    area: str = AREA,
) -> DirectoryEntry:
    hpke = generate_hpke_keypair(_seed(f"{agency}/{kid}/hpke"))
    signing = ed25519_from_seed(_seed(f"{agency}/{kid}/sign"))
    return DirectoryEntry(
        area=area,
        agency=agency,
        name=agency.title(),
        agency_type=agency_type,
        municipality="Teststad",
        kid=kid,
        signing_key=b64url_encode(ed25519_public_bytes(signing.public_key())),
        encryption_key=(
            None if agency_type is AgencyType.BROKER else b64url_encode(hpke.public_bytes)
        ),
        valid_from=valid_from,
        seal_until=seal_until,
        open_until=open_until,
        issued_at=issued_at,
    )


def _bundle(
    *entries: DirectoryEntry, root: Ed25519PrivateKey = ROOT, area: str = AREA
) -> DirectoryBundle:
    return DirectoryBundle(
        area=area,
        root_key=b64url_encode(ed25519_public_bytes(root.public_key())),
        entries=[sign_entry(e, root) for e in entries],
    )


def _directory(*entries: DirectoryEntry) -> Directory:
    return Directory(_bundle(*entries), ROOT.public_key())


def _public_bytes(entry: DirectoryEntry) -> bytes:
    return b64url_decode(entry.signing_key)


# --- canonical JSON and single entries ----------------------------------------------------


def test_canonical_json_sorts_keys_drops_whitespace_and_keeps_utf8() -> None:
    """Canonical JSON is sorted, compact and UTF-8 without escapes."""
    assert canonical_json({"b": [1, True, None], "a": "Lidingö"}) == (
        '{"a":"Lidingö","b":[1,true,null]}'.encode()
    )


@pytest.mark.parametrize(
    "value",
    [{"a": 1.5}, [float("nan")], {1: "a"}, {"a": b"bytes"}, {"a": {1, 2}}],
    ids=["float", "nan", "int-key", "bytes", "set"],
)
def test_canonical_json_refuses_what_has_no_single_encoding(value: object) -> None:
    """Floats, non-string keys and non-JSON types are refused."""
    with pytest.raises(TypeError):
        canonical_json(value)


def test_a_signed_entry_verifies_and_carries_the_exact_canonical_payload() -> None:
    """sign_entry signs the canonical JSON with the documented context; verify_entry reads it."""
    entry = _entry()
    signed = sign_entry(entry, ROOT)
    payload = b64url_decode(signed.payload)
    assert payload == canonical_json(entry.model_dump(mode="json"))
    ROOT.public_key().verify(b64url_decode(signed.signature), ENTRY_SIGNATURE_CONTEXT + payload)
    assert verify_entry(signed, ROOT.public_key()) == entry


def test_a_tampered_payload_is_refused() -> None:
    """Changing one field of the payload breaks the signature."""
    signed = sign_entry(_entry(), ROOT)
    data = json.loads(b64url_decode(signed.payload))
    data["agency_type"] = "police"
    forged = SignedDirectoryEntry(
        payload=b64url_encode(canonical_json(data)), signature=signed.signature
    )
    with pytest.raises(DirectoryError, match="signature does not verify"):
        verify_entry(forged, ROOT.public_key())


def test_a_tampered_signature_is_refused() -> None:
    """Flipping one bit of the signature is refused."""
    signed = sign_entry(_entry(), ROOT)
    signature = bytearray(b64url_decode(signed.signature))
    signature[10] ^= 0x01
    forged = SignedDirectoryEntry(payload=signed.payload, signature=b64url_encode(bytes(signature)))
    with pytest.raises(DirectoryError, match="signature does not verify"):
        verify_entry(forged, ROOT.public_key())


def test_an_entry_signed_by_another_root_is_refused() -> None:
    """Only the pinned root's signature counts."""
    with pytest.raises(DirectoryError, match="signature does not verify"):
        verify_entry(sign_entry(_entry(), OTHER_ROOT), ROOT.public_key())


def test_a_root_signed_payload_that_is_not_an_entry_is_refused() -> None:
    """A valid signature over something that is not an entry is still refused."""
    payload = canonical_json({"agency": "skolan"})
    signed = SignedDirectoryEntry(
        payload=b64url_encode(payload),
        signature=b64url_encode(ROOT.sign(ENTRY_SIGNATURE_CONTEXT + payload)),
    )
    with pytest.raises(DirectoryError, match="payload is invalid"):
        verify_entry(signed, ROOT.public_key())


# --- the Directory ------------------------------------------------------------------------


def test_a_bundle_naming_another_root_is_refused() -> None:
    """A bundle whose root differs from the pinned root is refused outright."""
    with pytest.raises(DirectoryError, match="pinned area root"):
        Directory(_bundle(_entry(), root=OTHER_ROOT), ROOT.public_key())


def test_a_bundle_relabelled_with_the_pinned_root_but_foreign_signatures_is_refused() -> None:
    """Swapping in the pinned root key does not make another root's entries verify."""
    bundle = _bundle(_entry(), root=OTHER_ROOT)
    relabelled = bundle.model_copy(
        update={"root_key": b64url_encode(ed25519_public_bytes(ROOT.public_key()))}
    )
    with pytest.raises(DirectoryError, match=r"entry 0 of the bundle .*'skolan'"):
        Directory(relabelled, ROOT.public_key())


def test_one_bad_entry_fails_the_whole_bundle_and_is_named() -> None:
    """A forged entry among good ones fails the bundle, naming its position and claim."""
    good = sign_entry(_entry("skolan"), ROOT)
    bad = sign_entry(_entry("polisen", agency_type=AgencyType.POLICE), OTHER_ROOT)
    bundle = DirectoryBundle(
        area=AREA,
        root_key=b64url_encode(ed25519_public_bytes(ROOT.public_key())),
        entries=[good, bad],
    )
    with pytest.raises(DirectoryError, match=r"entry 1 of the bundle .*'polisen'"):
        Directory(bundle, ROOT.public_key())


def test_entries_of_another_area_are_refused() -> None:
    """An entry certified for another area does not belong in this bundle."""
    with pytest.raises(DirectoryError, match="not the bundle's"):
        _directory(_entry(), _entry("annan", area="other-area"))


def test_a_bundle_of_another_area_is_refused_when_the_area_is_pinned() -> None:
    """With an expected area, a bundle of another area is refused."""
    with pytest.raises(DirectoryError, match="for area"):
        Directory(_bundle(_entry()), ROOT.public_key(), area="lidingo-demo")


def test_the_directory_is_a_key_lookup() -> None:
    """Directory satisfies the KeyLookup protocol the envelope code asks for."""
    lookup: KeyLookup = _directory(_entry())
    assert lookup.sealing_key("skolan", now=T0) is not None


def test_agencies_types_and_entries_are_listed() -> None:
    """agencies(), agency_type() and entry() answer from verified entries."""
    directory = _directory(
        _entry("skolan"),
        _entry("soc", agency_type=AgencyType.SOCIAL_SERVICES),
        _entry("broker", agency_type=AgencyType.BROKER),
    )
    assert directory.agencies() == ["broker", "skolan", "soc"]
    assert directory.agency_type("soc") is AgencyType.SOCIAL_SERVICES
    assert directory.agency_type("okänd") is None
    assert directory.entry("skolan", "kid-0001") == _entry("skolan")
    assert directory.entry("skolan", "kid-9999") is None
    assert directory.broker_agency() == "broker"


def test_one_agency_cannot_hold_two_types() -> None:
    """Entries giving one agency two types are refused: policy depends on the type."""
    with pytest.raises(DirectoryError, match="several types"):
        _directory(_entry(kid="kid-0001"), _entry(kid="kid-0002", agency_type=AgencyType.POLICE))


def test_the_latest_issued_entry_for_a_kid_wins_whatever_the_order() -> None:
    """A re-issued entry with seal_until supersedes the original in either bundle order."""
    original = _entry()
    reissued = _entry(seal_until=T0 + DAY, open_until=T0 + 2 * DAY, issued_at=T0 + DAY)
    for order in ((original, reissued), (reissued, original)):
        assert _directory(*order).entry("skolan", "kid-0001") == reissued


def test_two_different_entries_issued_at_the_same_time_are_refused() -> None:
    """With equal issued_at neither can win, so the bundle is refused."""
    with pytest.raises(DirectoryError, match="share one issued_at"):
        _directory(_entry(), _entry(seal_until=T0 + DAY))


def test_an_identical_duplicate_entry_is_harmless() -> None:
    """The same signed entry twice is the same entry."""
    assert len(_directory(_entry(), _entry()).entries()) == 1


# --- KeyLookup windows at their exact boundaries -----------------------------------------

OLD_SEAL = T0 + 10 * DAY
OLD_OPEN = T0 + 40 * DAY
WINDOWED = _entry(valid_from=T0, seal_until=OLD_SEAL, open_until=OLD_OPEN, issued_at=OLD_SEAL)
NEWER = _entry(kid="kid-0002", valid_from=OLD_SEAL, issued_at=OLD_SEAL)


@pytest.mark.parametrize(
    ("created", "now", "valid"),
    [
        pytest.param(T0 - TICK, T0, False, id="created-before-valid_from"),
        pytest.param(T0, T0, True, id="created-at-valid_from"),
        pytest.param(OLD_SEAL - TICK, OLD_SEAL, True, id="created-just-before-seal_until"),
        pytest.param(OLD_SEAL, OLD_SEAL, False, id="created-at-seal_until"),
        pytest.param(OLD_SEAL - TICK, OLD_OPEN - TICK, True, id="now-just-before-open_until"),
        pytest.param(OLD_SEAL - TICK, OLD_OPEN, False, id="now-at-open_until"),
        pytest.param(T0 + DAY, OLD_OPEN + DAY, False, id="now-past-open_until"),
    ],
)
def test_signing_key_windows(created: datetime, now: datetime, *, valid: bool) -> None:
    """signing_key applies valid_from <= created < seal_until and now < open_until exactly."""
    key = _directory(WINDOWED, NEWER).signing_key("skolan", "kid-0001", created=created, now=now)
    if valid:
        assert key is not None
        assert key.public_bytes_raw() == _public_bytes(WINDOWED)
    else:
        assert key is None


def test_an_entry_without_an_end_verifies_whenever_created_after_valid_from() -> None:
    """With no seal_until or open_until only valid_from limits a signature."""
    directory = _directory(NEWER)
    far = OLD_SEAL + 3650 * DAY
    assert directory.signing_key("skolan", "kid-0002", created=far, now=far) is not None
    assert directory.signing_key("skolan", "kid-0002", created=OLD_SEAL - TICK, now=far) is None


def test_unknown_agency_or_kid_has_no_signing_key() -> None:
    """Unknown (agency, kid) pairs give None, not an error."""
    directory = _directory(NEWER)
    assert directory.signing_key("skolan", "kid-9999", created=T0, now=T0) is None
    assert directory.signing_key("annan", "kid-0002", created=T0, now=T0) is None


@pytest.mark.parametrize(
    ("now", "kid"),
    [
        pytest.param(T0 - TICK, None, id="before-any-valid_from"),
        pytest.param(T0, "kid-0001", id="at-valid_from"),
        pytest.param(OLD_SEAL - TICK, "kid-0001", id="just-before-seal_until"),
        pytest.param(OLD_SEAL, "kid-0002", id="at-seal_until-the-new-key"),
        pytest.param(OLD_OPEN + DAY, "kid-0002", id="long-after"),
    ],
)
def test_sealing_key_windows(now: datetime, kid: str | None) -> None:
    """sealing_key picks the entry with valid_from <= now < seal_until, newest valid_from."""
    sealing = _directory(WINDOWED, NEWER).sealing_key("skolan", now=now)
    assert (None if sealing is None else sealing.kid) == kid


def test_sealing_prefers_the_newest_valid_from_when_several_are_open() -> None:
    """Two unsealed entries: the one with the later valid_from is sealed to."""
    directory = _directory(_entry(), _entry(kid="kid-0002", valid_from=T0 + DAY))
    assert directory.sealing_key("skolan", now=T0 + DAY - TICK).kid == "kid-0001"  # type: ignore[union-attr]
    assert directory.sealing_key("skolan", now=T0 + DAY).kid == "kid-0002"  # type: ignore[union-attr]


def test_the_broker_has_a_signing_key_but_no_sealing_key() -> None:
    """The broker signs but is never sealed to."""
    old = _entry(
        "broker",
        agency_type=AgencyType.BROKER,
        seal_until=OLD_SEAL,
        open_until=OLD_OPEN,
        issued_at=OLD_SEAL,
    )
    new = _entry("broker", "kid-0002", agency_type=AgencyType.BROKER, valid_from=OLD_SEAL)
    directory = _directory(old, new)
    assert directory.sealing_key("broker", now=T0) is None
    before = directory.broker_signing_key(created=OLD_SEAL - TICK, now=OLD_SEAL)
    after = directory.broker_signing_key(created=OLD_SEAL, now=OLD_SEAL)
    assert before is not None
    assert before.public_bytes_raw() == _public_bytes(old)
    assert after is not None
    assert after.public_bytes_raw() == _public_bytes(new)
    assert directory.broker_signing_key(created=OLD_SEAL - TICK, now=OLD_OPEN) is None
    assert directory.broker_signing_key(created=T0, now=T0, kid="kid-0002") is None
    assert directory.current_entry("broker", now=OLD_SEAL) == new


def test_bundles_round_trip_through_files(tmp_path: Path) -> None:
    """write_bundle and load_bundle keep every signed entry."""
    bundle = _bundle(_entry(), NEWER)
    path = tmp_path / "public" / "directory.json"
    write_bundle(path, bundle)
    assert load_bundle(path) == bundle
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_damaged_bundle_file_is_a_directory_error(tmp_path: Path) -> None:
    """A bundle that does not parse is refused, naming the file."""
    path = tmp_path / "directory.json"
    path.write_text('{"area": "x"}')
    with pytest.raises(DirectoryError, match=r"directory\.json: not a valid directory bundle"):
        load_bundle(path)


# --- init_area ----------------------------------------------------------------------------


def _rng(seed: int = 1) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _init(out: Path, *, insecure: bool = False, seed: int = 1) -> None:
    init_area(
        load_area(DEMO),
        out,
        passphrase=None if insecure else PASSPHRASE,
        insecure=insecure,
        now=T0,
        rng=_rng(seed),
        scrypt_n=FAST_N,
    )


@pytest.fixture(scope="module")
def demo_area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo area, initialised once for the read-only tests of this module."""
    out = tmp_path_factory.mktemp("demo") / "keys"
    _init(out)
    return out


def test_init_writes_the_whole_layout(demo_area: Path) -> None:
    """Every documented file is there, private keys 0600 and directories 0700."""
    config = load_area(DEMO)
    layout = AreaLayout(demo_area)
    directory = load_directory(demo_area)
    expected = {
        "README.txt",
        "area.toml",
        "public/root.pub",
        "public/directory.json",
        "public/ca.crt",
        "root/root.key",
        "root/ca.key",
        "root/README.txt",
        "broker/tls.crt",
        "broker/tls.key",
        f"broker/signing-{directory.current_entry('broker', now=T0).kid}.key",  # type: ignore[union-attr]
        "adapters/pseudonym.key",
    }
    for agency in config.agency:
        kid = directory.sealing_key(agency.id, now=T0).kid  # type: ignore[union-attr]
        folder = f"agencies/{agency.id}"
        expected |= {
            f"{folder}/signing-{kid}.key",
            f"{folder}/encryption-{kid}.key",
            f"{folder}/client.crt",
            f"{folder}/client.key",
        }
    for officer in config.officer:
        expected |= {f"officers/{officer.id}/client.crt", f"officers/{officer.id}/client.key"}
    files = {str(p.relative_to(demo_area)) for p in demo_area.rglob("*") if p.is_file()}
    assert files == expected
    for path in demo_area.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.suffix == ".key":
            assert mode == 0o600, path
    assert layout.area_file.read_text(encoding="utf-8") == DEMO.read_text(encoding="utf-8")
    assert "OFFLINE" in (layout.root_dir / "README.txt").read_text()


def test_every_entry_verifies_with_only_root_pub(demo_area: Path) -> None:
    """The bundle verifies against root.pub alone, with one entry per agency and the broker."""
    root_text = (demo_area / "public" / "root.pub").read_text().strip()
    root_public = ed25519_public_from_bytes(b64url_decode(root_text))
    bundle = load_bundle(demo_area / "public" / "directory.json")
    for signed in bundle.entries:
        verify_entry(signed, root_public)
    directory = Directory(bundle, root_public, area="lidingo-demo")
    config = load_area(DEMO)
    assert directory.agencies() == sorted([a.id for a in config.agency] + ["broker"])
    for agency in config.agency:
        assert directory.agency_type(agency.id) is agency.type
        entry = directory.current_entry(agency.id, now=T0)
        assert entry is not None
        assert (entry.valid_from, entry.seal_until, entry.open_until) == (T0, None, None)
    broker = directory.current_entry("broker", now=T0)
    assert broker is not None
    assert broker.agency_type is AgencyType.BROKER
    assert broker.encryption_key is None


def test_init_certificates_carry_roles_and_chain_to_the_area_ca(demo_area: Path) -> None:
    """Adapters, officers and the broker get certificates from the area CA with their roles."""
    authority = ca.load_cert_pem((demo_area / "public" / "ca.crt").read_bytes())

    def identity(path: Path) -> ca.PeerIdentity:
        cert = ca.load_cert_pem(path.read_bytes())
        cert.verify_directly_issued_by(authority)
        return ca.peer_identity(cert)

    school = identity(demo_area / "agencies" / "torsviks-skola" / "client.crt")
    assert (school.role, school.agency, school.area) == (
        ca.Role.ADAPTER,
        "torsviks-skola",
        "lidingo-demo",
    )
    officer = identity(demo_area / "officers" / "sakerhet-lidingo" / "client.crt")
    assert (officer.role, officer.agency) == (ca.Role.SECURITY_OFFICER, None)
    server = ca.load_cert_pem((demo_area / "broker" / "tls.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_tls_keys_are_encrypted_and_load_into_a_real_tls_context(demo_area: Path) -> None:
    """The broker's TLS key opens with the area passphrase, and only with it."""
    files = {
        "cert_file": demo_area / "broker" / "tls.crt",
        "key_file": demo_area / "broker" / "tls.key",
        "ca_file": demo_area / "public" / "ca.crt",
    }
    ca.server_ssl_context(**files, passphrase=PASSPHRASE)
    with pytest.raises(KeyStoreError):
        ca.server_ssl_context(**files, passphrase=b"wrong")
    assert b"ENCRYPTED" in (demo_area / "root" / "ca.key").read_bytes()


def test_loaded_keys_seal_and_open_through_the_directory(demo_area: Path) -> None:
    """An agency's loaded keys and the verified directory carry a real envelope end to end."""
    directory = load_directory(demo_area)
    school = load_agency_keys(demo_area, "torsviks-skola", passphrase=PASSPHRASE)
    social = load_agency_keys(demo_area, "lidingo-socialtjanst", passphrase=PASSPHRASE)
    recipient = directory.sealing_key("lidingo-socialtjanst", now=T0)
    assert recipient is not None
    sealed = seal(
        b"orosanmalan",
        sender=school.sender,
        recipients=[recipient],
        kind=Kind.CONCERN_REPORT,
        child="0" * 64,
        basis=REPORTING_DUTY,
        purpose=Purpose.CONCERN,
        created=T0,
        expires=T0 + DAY,
    )
    opened = open_envelope(sealed.wire, keys=directory, recipient=social.recipient, now=T0)
    assert opened.content == b"orosanmalan"


def test_the_broker_key_and_pseudonym_key_load(demo_area: Path) -> None:
    """The broker key matches its entry and the pseudonym key is 32 bytes of hmac key."""
    directory = load_directory(demo_area)
    broker = load_broker_key(demo_area, passphrase=PASSPHRASE)
    public = directory.broker_signing_key(created=T0, now=T0)
    assert public is not None
    assert public.public_bytes_raw() == broker.signing_key.public_key().public_bytes_raw()
    assert len(load_pseudonym_key(demo_area, passphrase=PASSPHRASE)) == 32
    with pytest.raises(KeyStoreError, match="use load_broker_key"):
        load_agency_keys(demo_area, "broker", passphrase=PASSPHRASE)


def test_a_renamed_key_file_is_caught_by_its_authenticated_kid(tmp_path: Path) -> None:
    """Renaming an old encryption key file to another kid is detected on load."""
    out = tmp_path / "keys"
    _init(out)
    folder = out / "agencies" / "bup-lidingo"
    (path,) = folder.glob("encryption-*.key")
    path.rename(folder / "encryption-20990101-deadbeef.key")
    with pytest.raises(KeyStoreError):
        load_agency_keys(out, "bup-lidingo", passphrase=PASSPHRASE)


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    """An existing non-empty output directory is never written into."""
    out = tmp_path / "keys"
    out.mkdir()
    (out / "something").write_text("mine")
    with pytest.raises(KeyStoreError, match="not an empty directory"):
        _init(out)
    assert [p.name for p in out.iterdir()] == ["something"]


def test_init_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    """An empty output directory is filled in place."""
    out = tmp_path / "keys"
    out.mkdir()
    _init(out)
    assert (out / "public" / "root.pub").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]  # no temporary sibling left


def test_init_refuses_no_passphrase_unless_insecure(tmp_path: Path) -> None:
    """Without a passphrase init writes nothing unless insecure keys were asked for."""
    with pytest.raises(KeyStoreError, match="passphrase is needed"):
        init_area(
            load_area(DEMO), tmp_path / "keys", passphrase=None, insecure=False, now=T0, rng=_rng()
        )
    assert not (tmp_path / "keys").exists()


def test_insecure_init_writes_plaintext_keys_that_need_allow_insecure(tmp_path: Path) -> None:
    """Insecure development keys are readable only with allow_insecure."""
    out = tmp_path / "keys"
    _init(out, insecure=True)
    assert json.loads((out / "root" / "root.key").read_text())["kdf"] == {"name": "none"}
    assert b"ENCRYPTED" not in (out / "root" / "ca.key").read_bytes()
    with pytest.raises(KeyStoreError, match="UNENCRYPTED"):
        load_pseudonym_key(out, passphrase=None)
    assert len(load_pseudonym_key(out, passphrase=None, allow_insecure=True)) == 32


def test_init_is_deterministic_in_its_injected_randomness(tmp_path: Path) -> None:
    """The same rng and time give the same root and key ids (the CA keys are the CA's own)."""
    first, second = tmp_path / "a", tmp_path / "b"
    _init(first, seed=5)
    _init(second, seed=5)
    assert (first / "public" / "root.pub").read_text() == (
        second / "public" / "root.pub"
    ).read_text()
    assert load_directory(first).entries() == load_directory(second).entries()


# --- rotation -----------------------------------------------------------------------------

ROTATED_AT = T0 + 100 * DAY
OVERLAP = timedelta(days=30)


@pytest.fixture
def rotated(tmp_path: Path) -> tuple[Path, str, str]:
    """A fresh demo area whose BUP keys were rotated once: (dir, old kid, new kid)."""
    out = tmp_path / "keys"
    _init(out)
    report = rotate_agency(
        out,
        "bup-lidingo",
        passphrase=PASSPHRASE,
        insecure=False,
        now=ROTATED_AT,
        rng=_rng(99),
        overlap=OVERLAP,
        scrypt_n=FAST_N,
    )
    assert report.seal_until == ROTATED_AT
    assert report.open_until == ROTATED_AT + OVERLAP
    return out, report.old_kid, report.new_kid


def test_after_rotation_new_messages_are_sealed_to_the_new_kid(
    rotated: tuple[Path, str, str],
) -> None:
    """From the rotation on, sealing uses the new kid; just before, the old one."""
    out, old, new = rotated
    directory = load_directory(out)
    assert old != new
    assert directory.sealing_key("bup-lidingo", now=ROTATED_AT).kid == new  # type: ignore[union-attr]
    assert directory.sealing_key("bup-lidingo", now=ROTATED_AT - TICK).kid == old  # type: ignore[union-attr]


def test_the_old_kid_verifies_until_open_until_and_not_after(
    rotated: tuple[Path, str, str],
) -> None:
    """The old key verifies messages created before seal_until while now < open_until."""
    out, old, new = rotated
    directory = load_directory(out)
    before = ROTATED_AT - TICK
    end = ROTATED_AT + OVERLAP
    assert directory.signing_key("bup-lidingo", old, created=before, now=end - TICK) is not None
    assert directory.signing_key("bup-lidingo", old, created=before, now=end) is None
    assert directory.signing_key("bup-lidingo", old, created=ROTATED_AT, now=ROTATED_AT) is None
    assert directory.signing_key("bup-lidingo", new, created=ROTATED_AT, now=end) is not None
    assert directory.signing_key("bup-lidingo", new, created=before, now=ROTATED_AT) is None


def test_the_agency_keeps_every_encryption_key_and_signs_with_the_new_one(
    rotated: tuple[Path, str, str],
) -> None:
    """load_agency_keys returns the new signing kid and both encryption keys with their ends."""
    out, old, new = rotated
    keys = load_agency_keys(out, "bup-lidingo", passphrase=PASSPHRASE)
    assert keys.kid == new
    assert set(keys.encryption_keys) == {old, new}
    assert keys.open_until == {old: ROTATED_AT + OVERLAP, new: None}
    assert keys.recipient.keys[old].open_until == ROTATED_AT + OVERLAP


def test_a_message_sealed_before_rotation_opens_until_the_overlap_ends(
    rotated: tuple[Path, str, str],
) -> None:
    """In-flight messages to the old key open during the overlap and not after it."""
    out, old, _new = rotated
    directory = load_directory(out)
    school = load_agency_keys(out, "torsviks-skola", passphrase=PASSPHRASE)
    bup = load_agency_keys(out, "bup-lidingo", passphrase=PASSPHRASE)
    old_sealing = directory.sealing_key("bup-lidingo", now=ROTATED_AT - TICK)
    assert old_sealing is not None
    assert old_sealing.kid == old
    created = ROTATED_AT - timedelta(hours=1)
    sealed = seal(
        b"remiss",
        sender=school.sender,
        recipients=[old_sealing],
        kind=Kind.REFERRAL,
        child="1" * 64,
        basis=REPORTING_DUTY,
        purpose=Purpose.CONCERN,
        created=created,
        expires=created + 60 * DAY,
    )
    during = ROTATED_AT + OVERLAP - TICK
    assert open_envelope(sealed.wire, keys=directory, recipient=bup.recipient, now=during).content
    with pytest.raises(InvalidEnvelope):
        open_envelope(sealed.wire, keys=directory, recipient=bup.recipient, now=during + TICK)


def test_rotation_keeps_old_private_keys_and_one_entry_per_kid(
    rotated: tuple[Path, str, str],
) -> None:
    """Old key files stay on disk, and the bundle holds the re-issued entry, not both."""
    out, old, new = rotated
    folder = out / "agencies" / "bup-lidingo"
    for kid in (old, new):
        assert (folder / f"signing-{kid}.key").is_file()
        assert read_private_key(folder / f"encryption-{kid}.key", passphrase=PASSPHRASE).kid == kid
    bundle = load_bundle(out / "public" / "directory.json")
    claims = [json.loads(b64url_decode(s.payload)) for s in bundle.entries]
    assert sum(1 for c in claims if c["agency"] == "bup-lidingo") == 2


def test_the_default_overlap_comes_from_the_area_file(tmp_path: Path) -> None:
    """Without an explicit overlap, rotation_overlap_days of the area applies."""
    out = tmp_path / "keys"
    _init(out)
    report = rotate_agency(
        out,
        "broker",
        passphrase=PASSPHRASE,
        insecure=False,
        now=ROTATED_AT,
        rng=_rng(3),
        scrypt_n=FAST_N,
    )
    assert report.open_until - report.seal_until == timedelta(days=30)
    assert load_broker_key(out, passphrase=PASSPHRASE).kid == report.new_kid


def test_rotation_refuses_unknown_agencies_and_a_wrong_passphrase(tmp_path: Path) -> None:
    """Rotation of an agency not in the area, or with the wrong passphrase, changes nothing."""
    out = tmp_path / "keys"
    _init(out)
    before = (out / "public" / "directory.json").read_bytes()
    with pytest.raises(KeyStoreError, match="no agency 'okand'"):
        rotate_agency(
            out, "okand", passphrase=PASSPHRASE, insecure=False, now=ROTATED_AT, rng=_rng()
        )
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        rotate_agency(
            out, "bup-lidingo", passphrase=b"wrong", insecure=False, now=ROTATED_AT, rng=_rng()
        )
    assert (out / "public" / "directory.json").read_bytes() == before


def test_rotation_at_the_time_of_issue_is_refused(tmp_path: Path) -> None:
    """A re-issued entry must be issued after the one it replaces, or it could not win."""
    out = tmp_path / "keys"
    _init(out)
    with pytest.raises(DirectoryError, match="rotation time must be after"):
        rotate_agency(out, "bup-lidingo", passphrase=PASSPHRASE, insecure=False, now=T0, rng=_rng())

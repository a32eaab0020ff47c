"""Creating an area's keys, rotating an agency's keys, and loading them back.

``init_area`` turns an area description into everything the area needs,
under one output directory (see :class:`AreaLayout` for the exact paths):

* ``public/``: the area root public key (the pin), the signed directory and
  the CA certificate, for every component;
* ``root/``: the area root key and the CA key, to be moved offline at once;
* ``broker/``: the broker's signing key and TLS server certificate;
* ``agencies/<id>/``: each agency's signing and encryption keys and its
  client certificate, for that agency's adapter only;
* ``officers/<id>/``: client certificates of security officers and operators;
* ``adapters/pseudonym.key``: the area pseudonym key, for adapters only.

Time and randomness are parameters, so a test can rebuild an area exactly.
The only clock and entropy readers are the CLI's defaults.

This module must never write a private key in clear unless the caller asked
for insecure development keys, never give the broker the pseudonym key, and
never overwrite an existing private key (old keys open old messages).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from keys import ca
from keys.area import BROKER_ID, AreaConfig, load_area
from keys.directory import Directory, load_bundle, sign_entry, verify_entry, write_bundle
from keys.envelope import OpeningKey, RecipientKeys, SenderKey
from keys.errors import DirectoryError, KeyStoreError
from keys.keystore import (
    SCRYPT_N,
    KeyAlg,
    ensure_private_dir,
    read_private_key,
    write_file_atomic,
    write_private_key,
)
from keys.material import (
    ED25519_LEN,
    HPKE_PRIVATE_LEN,
    HpkeKeyPair,
    ed25519_from_seed,
    ed25519_private_bytes,
    ed25519_public_bytes,
    ed25519_public_from_bytes,
    generate_hpke_keypair,
    hpke_keypair_from_private_bytes,
)
from schemas.common import b64url_decode, b64url_encode
from schemas.directory import AgencyType, DirectoryBundle, DirectoryEntry, SignedDirectoryEntry

__all__ = [
    "PSEUDONYM_KEY_LEN",
    "AgencyKeys",
    "AreaLayout",
    "BrokerKey",
    "InitReport",
    "RotationReport",
    "init_area",
    "load_agency_keys",
    "load_broker_key",
    "load_directory",
    "load_pseudonym_key",
    "rotate_agency",
]

Rng = Callable[[int], bytes]

#: Length of the area pseudonym key (HMAC-SHA256 wants a key as long as its output).
PSEUDONYM_KEY_LEN = 32

_PRIVATE = 0o600
_PUBLIC = 0o644

_ROOT_README = """\
This directory holds the area root key (root.key) and the area CA key (ca.key).

Move it OFFLINE now (for example to an encrypted USB stick kept in a safe) and
delete it from this machine. Whoever holds these two keys and the passphrase
can certify a key for any agency of the area and issue client certificates for
any role, including security officer.

Bring it back only to rotate keys (`backa keys rotate`) or to certify a new
agency; public/root.pub and public/ca.crt are all that anything else needs.
"""

_OUT_README = """\
Keys of Backa barnet area {area_id} ({area_name}), made by `backa keys init`.

Give each component only its part:

  every component     public/root.pub (the area root to pin), public/ca.crt,
                      public/directory.json
  the broker          broker/  (never adapters/ and never agencies/)
  agency <id>         agencies/<id>/ and adapters/pseudonym.key
  officer <id>        officers/<id>/
  nobody, offline     root/  (see root/README.txt)

`backa keys show --dir <this directory>` lists and verifies the directory.
"""


@dataclass(frozen=True)
class AreaLayout:
    """Where each file of an area's key directory lives, relative to ``base``."""

    base: Path

    @property
    def area_file(self) -> Path:
        """The copy of the area description the keys were made from."""
        return self.base / "area.toml"

    @property
    def public(self) -> Path:
        """Files for every component: root.pub, directory.json, ca.crt."""
        return self.base / "public"

    @property
    def root_pub(self) -> Path:
        """The area root public key, base64url of its 32 raw bytes: the pin."""
        return self.public / "root.pub"

    @property
    def directory_file(self) -> Path:
        """The signed directory bundle."""
        return self.public / "directory.json"

    @property
    def ca_cert(self) -> Path:
        """The area CA certificate (PEM), the only trust anchor for mTLS."""
        return self.public / "ca.crt"

    @property
    def root_dir(self) -> Path:
        """The offline part: root.key, ca.key and a README."""
        return self.base / "root"

    @property
    def root_key(self) -> Path:
        """The area root private key (keystore format)."""
        return self.root_dir / "root.key"

    @property
    def ca_key(self) -> Path:
        """The area CA private key (PKCS#8 PEM)."""
        return self.root_dir / "ca.key"

    @property
    def broker_dir(self) -> Path:
        """The broker's signing keys and TLS server certificate."""
        return self.base / "broker"

    def agency_dir(self, agency: str) -> Path:
        """Where an agency's keys live; the broker's are under ``broker/``."""
        if agency == BROKER_ID:
            return self.broker_dir
        return self.base / "agencies" / agency

    def officer_dir(self, officer: str) -> Path:
        """An officer's client certificate and key."""
        return self.base / "officers" / officer

    @property
    def pseudonym_key(self) -> Path:
        """The area pseudonym key, for adapters only."""
        return self.base / "adapters" / "pseudonym.key"

    @staticmethod
    def signing_key_name(kid: str) -> str:
        """File name of the signing key with this kid."""
        return f"signing-{kid}.key"

    @staticmethod
    def encryption_key_name(kid: str) -> str:
        """File name of the encryption key with this kid."""
        return f"encryption-{kid}.key"


@dataclass(frozen=True)
class InitReport:
    """What ``init_area`` made: key ids per agency and every file written."""

    out: Path
    area: str
    root_key: str
    broker_kid: str
    agency_kids: Mapping[str, str]
    officers: tuple[str, ...]
    insecure: bool
    files: tuple[Path, ...]


@dataclass(frozen=True)
class RotationReport:
    """What ``rotate_agency`` changed."""

    agency: str
    old_kid: str
    new_kid: str
    seal_until: datetime
    open_until: datetime
    files: tuple[Path, ...]


@dataclass(frozen=True)
class AgencyKeys:
    """An agency's private keys: the current signing key and every encryption key it holds."""

    agency: str
    kid: str
    signing_key: Ed25519PrivateKey = field(repr=False)
    encryption_keys: Mapping[str, HpkeKeyPair] = field(repr=False)
    #: ``open_until`` of each encryption key's directory entry at load time.
    open_until: Mapping[str, datetime | None]

    @property
    def encryption_key(self) -> HpkeKeyPair:
        """The current encryption key pair (same kid as the signing key)."""
        return self.encryption_keys[self.kid]

    @property
    def sender(self) -> SenderKey:
        """The current signing key, as the envelope code wants it."""
        return SenderKey(agency=self.agency, kid=self.kid, private_key=self.signing_key)

    @property
    def recipient(self) -> RecipientKeys:
        """Every encryption key with its end of overlap, as the envelope code wants them."""
        return RecipientKeys(
            agency=self.agency,
            keys={
                kid: OpeningKey(private_key=pair.private_key, open_until=self.open_until.get(kid))
                for kid, pair in self.encryption_keys.items()
            },
        )


@dataclass(frozen=True)
class BrokerKey:
    """The broker's current signing key."""

    agency: str
    kid: str
    signing_key: Ed25519PrivateKey = field(repr=False)

    @property
    def sender(self) -> SenderKey:
        """The broker as a signer (receipts, audit checkpoints)."""
        return SenderKey(agency=self.agency, kid=self.kid, private_key=self.signing_key)


# --- helpers --------------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _new_kid(now: datetime, rng: Rng, taken: Callable[[str], bool] = lambda _kid: False) -> str:
    # Date for people reading a directory, random part so two keys of one day differ.
    for _attempt in range(16):
        kid = f"{now:%Y%m%d}-{rng(4).hex()}"
        if not taken(kid):
            return kid
    raise KeyStoreError("the random source keeps returning key ids already in use")


def _check_mode(passphrase: bytes | None, *, insecure: bool) -> None:
    if passphrase is None and not insecure:
        raise KeyStoreError(
            "a passphrase is needed to protect the private keys "
            "(or ask for insecure development keys explicitly)"
        )
    if passphrase is not None and insecure:
        raise KeyStoreError("pass either a passphrase or insecure development keys, not both")
    if passphrase is not None and not passphrase:
        raise KeyStoreError("an empty passphrase is not a passphrase")


def _exact(rng: Rng, size: int) -> bytes:
    value = rng(size)
    if len(value) != size:
        raise KeyStoreError(f"the random source returned {len(value)} bytes, not {size}")
    return value


@dataclass
class _Writer:
    """Writes the files of one operation under ``base`` and remembers them for the report."""

    base: Path
    passphrase: bytes | None
    insecure: bool
    rng: Rng
    scrypt_n: int
    written: list[Path] = field(default_factory=list)

    def key(self, path: Path, alg: KeyAlg, kid: str, secret: bytes) -> None:
        write_private_key(
            path,
            alg,
            kid,
            secret,
            passphrase=self.passphrase,
            insecure=self.insecure,
            rng=self.rng,
            scrypt_n=self.scrypt_n,
        )
        self.written.append(path.relative_to(self.base))

    def file(self, path: Path, data: bytes, *, mode: int) -> None:
        write_file_atomic(path, data, mode=mode)
        self.written.append(path.relative_to(self.base))

    def issued(self, directory: Path, name: str, issued: ca.Issued) -> None:
        self.file(directory / f"{name}.crt", ca.cert_to_pem(issued.cert), mode=_PUBLIC)
        self.file(
            directory / f"{name}.key", ca.key_to_pem(issued.key, self.passphrase), mode=_PRIVATE
        )


def _entry(**values: object) -> DirectoryEntry:
    try:
        return DirectoryEntry.model_validate(values)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(entry)" for e in exc.errors())
        raise DirectoryError(f"cannot make a directory entry ({fields})") from exc


# --- init -----------------------------------------------------------------------------------


def init_area(
    area: AreaConfig,
    out: Path,
    *,
    passphrase: bytes | None,
    insecure: bool,
    now: datetime,
    rng: Rng,
    scrypt_n: int = SCRYPT_N,
) -> InitReport:
    """Create the root, the CA and every key and certificate of ``area`` under ``out``.

    ``out`` must not exist or be empty. Everything is built in a sibling
    temporary directory and renamed into place at the end, so a failure
    leaves no half-made area behind.
    """
    _check_mode(passphrase, insecure=insecure)
    now = _utc(now)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KeyStoreError(f"{out} already exists and is not an empty directory; choose a new one")
    try:
        ensure_private_dir(out.parent)
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.init-"))
    except OSError as exc:
        raise KeyStoreError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        report = _init_into(
            work,
            area,
            passphrase=passphrase,
            insecure=insecure,
            now=now,
            rng=rng,
            scrypt_n=scrypt_n,
        )
        # rename(2) replaces an empty directory, so an existing empty `out` is fine too.
        try:
            work.replace(out)
        except OSError as exc:
            raise KeyStoreError(f"cannot move the new area into {out}: {exc.strerror}") from exc
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dataclasses.replace(report, out=out)


def _init_into(
    base: Path,
    area: AreaConfig,
    *,
    passphrase: bytes | None,
    insecure: bool,
    now: datetime,
    rng: Rng,
    scrypt_n: int,
) -> InitReport:
    layout = AreaLayout(base)
    w = _Writer(base, passphrase, insecure, rng, scrypt_n)
    area_id = area.area.id
    validity = area.area.key_validity_days

    root = ed25519_from_seed(_exact(rng, ED25519_LEN))
    root_pub = b64url_encode(ed25519_public_bytes(root.public_key()))
    root_kid = _new_kid(now, rng)
    w.key(layout.root_key, KeyAlg.ED25519, root_kid, ed25519_private_bytes(root))
    authority = ca.create_ca(area=area_id, now=now)
    w.file(layout.ca_key, ca.key_to_pem(authority.key, passphrase), mode=_PRIVATE)
    w.file(layout.root_dir / "README.txt", _ROOT_README.encode(), mode=_PUBLIC)

    entries: list[DirectoryEntry] = []

    broker_seed = _exact(rng, ED25519_LEN)
    broker_kid = _new_kid(now, rng)
    w.key(
        layout.broker_dir / layout.signing_key_name(broker_kid),
        KeyAlg.ED25519,
        broker_kid,
        broker_seed,
    )
    entries.append(
        _entry(
            area=area_id,
            agency=BROKER_ID,
            name=f"Broker, {area.area.name}"[:200],
            agency_type=AgencyType.BROKER,
            municipality=None,
            kid=broker_kid,
            signing_key=b64url_encode(
                ed25519_public_bytes(ed25519_from_seed(broker_seed).public_key())
            ),
            encryption_key=None,
            valid_from=now,
            issued_at=now,
        )
    )
    server = ca.issue_server_cert(
        authority,
        hostnames=area.area.broker_hostnames,
        ips=area.area.broker_ips,
        now=now,
        valid_days=validity,
    )
    w.issued(layout.broker_dir, "tls", server)

    agency_kids: dict[str, str] = {}
    for agency in area.agency:
        directory = layout.agency_dir(agency.id)
        kid = _new_kid(now, rng)
        signing_seed = _exact(rng, ED25519_LEN)
        hpke = generate_hpke_keypair(_exact(rng, HPKE_PRIVATE_LEN))
        w.key(directory / layout.signing_key_name(kid), KeyAlg.ED25519, kid, signing_seed)
        w.key(directory / layout.encryption_key_name(kid), KeyAlg.HPKE, kid, hpke.private_bytes)
        entries.append(
            _entry(
                area=area_id,
                agency=agency.id,
                name=agency.name,
                agency_type=agency.type,
                municipality=agency.municipality,
                kid=kid,
                signing_key=b64url_encode(
                    ed25519_public_bytes(ed25519_from_seed(signing_seed).public_key())
                ),
                encryption_key=b64url_encode(hpke.public_bytes),
                valid_from=now,
                issued_at=now,
            )
        )
        client = ca.issue_client_cert(
            authority,
            common_name=agency.id,
            role=ca.Role.ADAPTER,
            agency=agency.id,
            area=area_id,
            now=now,
            valid_days=validity,
        )
        w.issued(directory, "client", client)
        agency_kids[agency.id] = kid

    for officer in area.officer:
        client = ca.issue_client_cert(
            authority,
            common_name=officer.id,
            role=ca.Role(officer.role),
            agency=None,
            area=area_id,
            now=now,
            valid_days=validity,
        )
        w.issued(layout.officer_dir(officer.id), "client", client)

    pseudonym_kid = _new_kid(now, rng)
    w.key(layout.pseudonym_key, KeyAlg.HMAC_SHA256, pseudonym_kid, _exact(rng, PSEUDONYM_KEY_LEN))

    bundle = DirectoryBundle(
        area=area_id, root_key=root_pub, entries=[sign_entry(e, root) for e in entries]
    )
    ensure_private_dir(layout.public)
    write_bundle(layout.directory_file, bundle)
    w.written.append(layout.directory_file.relative_to(base))
    w.file(layout.root_pub, (root_pub + "\n").encode("ascii"), mode=_PUBLIC)
    w.file(layout.ca_cert, ca.cert_to_pem(authority.cert), mode=_PUBLIC)
    w.file(layout.area_file, area.to_toml().encode("utf-8"), mode=_PUBLIC)
    readme = _OUT_README.format(area_id=area_id, area_name=area.area.name)
    w.file(base / "README.txt", readme.encode("utf-8"), mode=_PUBLIC)

    return InitReport(
        out=base,
        area=area_id,
        root_key=root_pub,
        broker_kid=broker_kid,
        agency_kids=agency_kids,
        officers=tuple(o.id for o in area.officer),
        insecure=insecure,
        files=tuple(sorted(w.written)),
    )


# --- loading --------------------------------------------------------------------------------


def _read(
    path: Path,
    alg: KeyAlg,
    *,
    passphrase: bytes | None,
    allow_insecure: bool,
    kid: str | None = None,
) -> bytes:
    stored = read_private_key(path, passphrase=passphrase, allow_insecure=allow_insecure)
    if stored.alg is not alg:
        raise KeyStoreError(f"{path} holds a {stored.alg.value} key, not {alg.value}")
    # The kid is authenticated inside the file; the file name is not, so check they agree.
    if kid is not None and stored.kid != kid:
        raise KeyStoreError(f"{path} holds key id {stored.kid!r}, not {kid!r}")
    return stored.secret


def load_directory(out: Path) -> Directory:
    """The verified directory of a key directory, pinned to its ``public/root.pub``.

    The pin is only as good as the channel ``root.pub`` came by: copy it from
    the offline root, never from the broker.
    """
    layout = AreaLayout(out)
    try:
        text = layout.root_pub.read_text(encoding="ascii").strip()
        root_public = ed25519_public_from_bytes(b64url_decode(text))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DirectoryError(f"{layout.root_pub}: not a readable area root public key") from exc
    return Directory(load_bundle(layout.directory_file), root_public)


def _current(directory: Directory, agency: str) -> DirectoryEntry:
    # The current key is the one not yet sealed; with several, the newest.
    open_entries = [e for e in directory.entries() if e.agency == agency and e.seal_until is None]
    if not open_entries:
        raise DirectoryError(f"agency {agency!r} has no current key in the directory")
    return max(open_entries, key=lambda e: (e.valid_from, e.issued_at, e.kid))


def load_agency_keys(
    out: Path, agency: str, *, passphrase: bytes | None, allow_insecure: bool = False
) -> AgencyKeys:
    """An agency's current signing key and every encryption key in its directory, by kid.

    Each private key is checked against the public key the directory certifies
    for its kid, so keys and directory cannot silently drift apart.
    """
    if agency == BROKER_ID:
        raise KeyStoreError("the broker has no agency keys; use load_broker_key")
    directory = load_directory(out)
    layout = AreaLayout(out)
    current = _current(directory, agency)
    folder = layout.agency_dir(agency)
    signing = ed25519_from_seed(
        _read(
            folder / layout.signing_key_name(current.kid),
            KeyAlg.ED25519,
            passphrase=passphrase,
            allow_insecure=allow_insecure,
            kid=current.kid,
        )
    )
    if b64url_encode(ed25519_public_bytes(signing.public_key())) != current.signing_key:
        raise KeyStoreError(f"{folder}: signing key {current.kid} does not match the directory")
    encryption: dict[str, HpkeKeyPair] = {}
    open_until: dict[str, datetime | None] = {}
    for path in sorted(folder.glob("encryption-*.key")):
        kid = path.name.removeprefix("encryption-").removesuffix(".key")
        pair = hpke_keypair_from_private_bytes(
            _read(path, KeyAlg.HPKE, passphrase=passphrase, allow_insecure=allow_insecure, kid=kid)
        )
        entry = directory.entry(agency, kid)
        if entry is None or entry.encryption_key != b64url_encode(pair.public_bytes):
            raise KeyStoreError(f"{path} does not match the directory entry for kid {kid!r}")
        encryption[kid] = pair
        open_until[kid] = entry.open_until
    if current.kid not in encryption:
        raise KeyStoreError(f"{folder}: the current encryption key {current.kid} is missing")
    return AgencyKeys(
        agency=agency,
        kid=current.kid,
        signing_key=signing,
        encryption_keys=encryption,
        open_until=open_until,
    )


def load_broker_key(
    out: Path, *, passphrase: bytes | None, allow_insecure: bool = False
) -> BrokerKey:
    """The broker's current signing key, checked against the directory."""
    directory = load_directory(out)
    layout = AreaLayout(out)
    current = _current(directory, BROKER_ID)
    if current.agency_type is not AgencyType.BROKER:
        raise DirectoryError(f"directory entry {BROKER_ID!r} is not of type broker")
    path = layout.broker_dir / layout.signing_key_name(current.kid)
    key = ed25519_from_seed(
        _read(
            path,
            KeyAlg.ED25519,
            passphrase=passphrase,
            allow_insecure=allow_insecure,
            kid=current.kid,
        )
    )
    if b64url_encode(ed25519_public_bytes(key.public_key())) != current.signing_key:
        raise KeyStoreError(f"{path} does not match the directory")
    return BrokerKey(agency=BROKER_ID, kid=current.kid, signing_key=key)


def load_pseudonym_key(
    out: Path, *, passphrase: bytes | None, allow_insecure: bool = False
) -> bytes:
    """The area pseudonym key (raw bytes), for an adapter."""
    return _read(
        AreaLayout(out).pseudonym_key,
        KeyAlg.HMAC_SHA256,
        passphrase=passphrase,
        allow_insecure=allow_insecure,
    )


def _load_root(
    layout: AreaLayout, directory: Directory, passphrase: bytes | None, *, allow_insecure: bool
) -> Ed25519PrivateKey:
    root = ed25519_from_seed(
        _read(layout.root_key, KeyAlg.ED25519, passphrase=passphrase, allow_insecure=allow_insecure)
    )
    if b64url_encode(ed25519_public_bytes(root.public_key())) != directory.root_key:
        raise KeyStoreError(f"{layout.root_key} is not the key of {layout.root_pub}")
    return root


# --- rotation -------------------------------------------------------------------------------


def rotate_agency(
    out: Path,
    agency: str,
    *,
    passphrase: bytes | None,
    insecure: bool,
    now: datetime,
    rng: Rng,
    overlap: timedelta | None = None,
    scrypt_n: int = SCRYPT_N,
) -> RotationReport:
    """Give an agency (or the broker) new keys under a new kid, keeping the old ones.

    The current entry is re-issued with ``seal_until = now`` (nobody seals to
    it any more) and ``open_until = now + overlap`` (messages already sealed
    to it can still be verified and opened until then); the new entry is valid
    from ``now``. Needs the root key, so it runs where ``root/`` is.
    """
    _check_mode(passphrase, insecure=insecure)
    now = _utc(now)
    layout = AreaLayout(out)
    area = load_area(layout.area_file)
    if overlap is None:
        overlap = timedelta(days=area.area.rotation_overlap_days)
    if overlap < timedelta(0):
        raise KeyStoreError("the rotation overlap cannot be negative")
    if agency != BROKER_ID and area.agency_by_id(agency) is None:
        raise KeyStoreError(f"{layout.area_file} has no agency {agency!r}")
    directory = load_directory(out)
    root = _load_root(layout, directory, passphrase, allow_insecure=insecure)
    old = directory.current_entry(agency, now=now)
    if old is None:
        raise DirectoryError(f"agency {agency!r} has no key valid at {now.isoformat()} to rotate")
    if now <= old.issued_at:
        # The re-issued entry must have a later issued_at than the one it replaces.
        raise DirectoryError(f"rotation time must be after {old.issued_at.isoformat()}")

    w = _Writer(out, passphrase, insecure, rng, scrypt_n)
    kid = _new_kid(now, rng, taken=lambda k: directory.entry(agency, k) is not None)
    folder = layout.agency_dir(agency)
    signing_seed = _exact(rng, ED25519_LEN)
    w.key(folder / layout.signing_key_name(kid), KeyAlg.ED25519, kid, signing_seed)
    encryption_key: str | None = None
    if old.agency_type is not AgencyType.BROKER:
        hpke = generate_hpke_keypair(_exact(rng, HPKE_PRIVATE_LEN))
        w.key(folder / layout.encryption_key_name(kid), KeyAlg.HPKE, kid, hpke.private_bytes)
        encryption_key = b64url_encode(hpke.public_bytes)

    values = old.model_dump()
    open_until = now + overlap
    retired = _entry(**{**values, "seal_until": now, "open_until": open_until, "issued_at": now})
    fresh = _entry(
        **{
            **values,
            "kid": kid,
            "signing_key": b64url_encode(
                ed25519_public_bytes(ed25519_from_seed(signing_seed).public_key())
            ),
            "encryption_key": encryption_key,
            "valid_from": now,
            "seal_until": None,
            "open_until": None,
            "issued_at": now,
        }
    )
    bundle = load_bundle(layout.directory_file)
    root_public = root.public_key()
    kept: list[SignedDirectoryEntry] = []
    for signed in bundle.entries:
        entry = verify_entry(signed, root_public)
        # The re-issued entry supersedes the old one; keeping both would only grow the bundle.
        if (entry.agency, entry.kid) != (agency, old.kid):
            kept.append(signed)
    updated = DirectoryBundle(
        area=bundle.area,
        root_key=bundle.root_key,
        entries=[*kept, sign_entry(retired, root), sign_entry(fresh, root)],
    )
    # Check the result as any adapter will before anyone sees it.
    Directory(updated, root_public)
    write_bundle(layout.directory_file, updated)
    w.written.append(layout.directory_file.relative_to(out))
    return RotationReport(
        agency=agency,
        old_kid=old.kid,
        new_kid=kid,
        seal_until=now,
        open_until=open_until,
        files=tuple(w.written),
    )

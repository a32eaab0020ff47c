"""The area directory: root-certified agency keys, and lookups over verified entries only.

The area root (Ed25519) signs each :class:`~schemas.directory.DirectoryEntry`
over ``b"backa-directory-entry-v1\\x00" + payload``, where the payload is the
entry's canonical JSON (:func:`canonical_json`). A :class:`Directory` is built
from a bundle plus a root public key the caller *pinned* out of band; it
verifies every entry before it holds it, so whoever serves the bundle (the
broker, a file share) cannot substitute a key.

When the root has signed several entries for the same agency and key id, the
one with the latest ``issued_at`` wins: rotation re-issues the old entry with
``seal_until`` and ``open_until`` set.

This module must never hand out a key from an entry it has not verified, and
never trust the root key named inside a bundle in place of the pinned one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PublicKey
from pydantic import ValidationError

from keys.errors import DirectoryError
from keys.lookup import SealingKey
from keys.material import (
    ed25519_public_bytes,
    ed25519_public_from_bytes,
    hpke_public_key_from_bytes,
)
from schemas.common import b64url_decode, b64url_encode
from schemas.directory import AgencyType, DirectoryBundle, DirectoryEntry, SignedDirectoryEntry

__all__ = [
    "ENTRY_SIGNATURE_CONTEXT",
    "Directory",
    "canonical_json",
    "load_bundle",
    "sign_entry",
    "verify_entry",
    "write_bundle",
]

#: Domain separation: a directory signature can never be taken for any other signature.
ENTRY_SIGNATURE_CONTEXT = b"backa-directory-entry-v1\x00"

_JsonScalar = str | int | bool | None
#: Exactly these types (not subclasses, which may serialise differently) skip the recursion.
_SCALAR_TYPES = frozenset({str, int, bool})


def _check_json(value: object, path: str) -> None:
    # Scalars are checked inline and a path is only built for a container, since
    # every receipt the broker signs comes through here.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: object keys must be strings, got {type(key).__name__}")
            if not (item is None or type(item) in _SCALAR_TYPES):
                _check_json(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if not (item is None or type(item) in _SCALAR_TYPES):
                _check_json(item, f"{path}[{index}]")
    elif isinstance(value, float):
        # Floats have several JSON spellings across languages; a signed payload needs one.
        raise TypeError(f"{path}: floats are not allowed in canonical JSON")
    elif not isinstance(value, _JsonScalar):
        raise TypeError(f"{path}: {type(value).__name__} is not a JSON value")


def canonical_json(obj: object) -> bytes:
    """The one byte encoding of a JSON value that we sign or authenticate.

    Sorted keys, no whitespace, UTF-8 without ``\\u`` escapes for non-ASCII;
    floats and non-JSON types are refused with TypeError.
    """
    _check_json(obj, "$")
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sign_entry(entry: DirectoryEntry, root: Ed25519PrivateKey) -> SignedDirectoryEntry:
    """Certify a directory entry with the area root key."""
    payload = canonical_json(entry.model_dump(mode="json"))
    signature = root.sign(ENTRY_SIGNATURE_CONTEXT + payload)
    return SignedDirectoryEntry(payload=b64url_encode(payload), signature=b64url_encode(signature))


def verify_entry(signed: SignedDirectoryEntry, root_public: Ed25519PublicKey) -> DirectoryEntry:
    """The entry inside ``signed``, after checking the root's signature over its exact bytes."""
    try:
        payload = b64url_decode(signed.payload)
        signature = b64url_decode(signed.signature)
    except ValueError as exc:
        raise DirectoryError("directory entry is not valid base64url") from exc
    try:
        root_public.verify(signature, ENTRY_SIGNATURE_CONTEXT + payload)
    except InvalidSignature as exc:
        raise DirectoryError(
            "directory entry signature does not verify against the area root"
        ) from exc
    try:
        return DirectoryEntry.model_validate_json(payload)
    except ValidationError as exc:
        # A root-signed payload that does not parse is a tooling bug, not an attack;
        # the field names help find it and an entry holds public data only.
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(entry)" for e in exc.errors())
        raise DirectoryError(f"directory entry payload is invalid ({fields})") from exc


@dataclass(frozen=True, slots=True)
class _Held:
    """A verified entry with its keys parsed once."""

    entry: DirectoryEntry
    signing_key: Ed25519PublicKey
    encryption_key: MLKEM768X25519PublicKey | None
    signed: SignedDirectoryEntry | None = None  # as the root signed it, to serve it on


def _claimed(signed: SignedDirectoryEntry) -> str:
    """What an (unverified) entry says it is, only to name it in an error message."""
    try:
        data = json.loads(b64url_decode(signed.payload))
        agency, kid = str(data["agency"])[:64], str(data["kid"])[:64]
    except (ValueError, TypeError, KeyError):
        return ""
    return f" (claims agency {agency!r}, kid {kid!r})"


def _parse_keys(entry: DirectoryEntry) -> _Held:
    try:
        signing = ed25519_public_from_bytes(b64url_decode(entry.signing_key))
        encryption = (
            None
            if entry.encryption_key is None
            else hpke_public_key_from_bytes(b64url_decode(entry.encryption_key))
        )
    except ValueError as exc:
        raise DirectoryError("directory entry carries a malformed public key") from exc
    return _Held(entry=entry, signing_key=signing, encryption_key=encryption)


def _verify_in_bundle(
    signed: SignedDirectoryEntry, root_public: Ed25519PublicKey, area: str
) -> _Held:
    entry = verify_entry(signed, root_public)
    if entry.area != area:
        raise DirectoryError(f"entry is for area {entry.area!r}, not the bundle's {area!r}")
    parsed = _parse_keys(entry)
    return _Held(parsed.entry, parsed.signing_key, parsed.encryption_key, signed)


def _merge(held: dict[tuple[str, str], _Held], item: _Held) -> None:
    """Keep the entry with the latest issued_at per (agency, kid)."""
    entry = item.entry
    key = (entry.agency, entry.kid)
    previous = held.get(key)
    if previous is None or entry.issued_at > previous.entry.issued_at:
        held[key] = item
    elif entry.issued_at == previous.entry.issued_at and entry != previous.entry:
        # Neither can win; trusting either would let the server choose.
        raise DirectoryError(
            "two different entries for the same agency and kid share one issued_at"
        )


class Directory:
    """Verified directory entries of one area; implements :class:`keys.lookup.KeyLookup`."""

    def __init__(
        self, bundle: DirectoryBundle, root_public: Ed25519PublicKey, *, area: str | None = None
    ) -> None:
        """Verify every entry of ``bundle`` against the pinned ``root_public``.

        ``area``, when given, must be the bundle's area. Any entry that fails
        makes the whole bundle fail: a partly forged bundle is not trusted in part.
        """
        pinned = b64url_encode(ed25519_public_bytes(root_public))
        if bundle.root_key != pinned:
            raise DirectoryError(
                f"the directory bundle names root key {bundle.root_key}, "
                f"but the pinned area root is {pinned}"
            )
        if area is not None and bundle.area != area:
            raise DirectoryError(f"the directory bundle is for area {bundle.area!r}, not {area!r}")
        self._area = bundle.area
        self._root_key = pinned
        held: dict[tuple[str, str], _Held] = {}
        for index, signed in enumerate(bundle.entries):
            try:
                item = _verify_in_bundle(signed, root_public, bundle.area)
                _merge(held, item)
            except DirectoryError as exc:
                raise DirectoryError(
                    f"entry {index} of the bundle{_claimed(signed)}: {exc}"
                ) from exc
        self._held = held
        self._by_agency: dict[str, list[_Held]] = {}
        for (agency, _kid), item in sorted(held.items()):
            self._by_agency.setdefault(agency, []).append(item)
        for agency, items in self._by_agency.items():
            # Policy decides on agency type; one agency must not hold two.
            types = {i.entry.agency_type for i in items}
            if len(types) > 1:
                names = ", ".join(sorted(t.value for t in types))
                raise DirectoryError(f"agency {agency!r} has entries of several types: {names}")

    @property
    def area(self) -> str:
        """The area id of every entry."""
        return self._area

    @property
    def root_key(self) -> str:
        """The pinned area root public key, base64url."""
        return self._root_key

    # --- KeyLookup --------------------------------------------------------------------------

    def signing_key(
        self, agency: str, kid: str, *, created: datetime, now: datetime
    ) -> Ed25519PublicKey | None:
        """The sender's verification key for a message created at ``created``.

        None unless ``valid_from <= created`` and (``seal_until`` is None or
        ``created < seal_until``) and (``open_until`` is None or ``now < open_until``).
        """
        item = self._held.get((agency, kid))
        if item is None:
            return None
        entry = item.entry
        if created < entry.valid_from:
            return None
        if entry.seal_until is not None and not created < entry.seal_until:
            return None
        if entry.open_until is not None and not now < entry.open_until:
            return None
        return item.signing_key

    def sealing_key(self, agency: str, *, now: datetime) -> SealingKey | None:
        """The agency's encryption key to seal new messages to at ``now``, if any."""
        item = self._current(agency, now=now, need_encryption=True)
        if item is None or item.encryption_key is None:
            return None
        return SealingKey(agency=agency, kid=item.entry.kid, public_key=item.encryption_key)

    # --- more than KeyLookup ----------------------------------------------------------------

    def _current(self, agency: str, *, now: datetime, need_encryption: bool) -> _Held | None:
        candidates = [
            i
            for i in self._by_agency.get(agency, [])
            if i.entry.valid_from <= now
            and (i.entry.seal_until is None or now < i.entry.seal_until)
            and (i.encryption_key is not None or not need_encryption)
        ]
        if not candidates:
            return None
        # Newest valid_from wins; issued_at and kid only make a tie deterministic.
        return max(candidates, key=lambda i: (i.entry.valid_from, i.entry.issued_at, i.entry.kid))

    def current_entry(self, agency: str, *, now: datetime) -> DirectoryEntry | None:
        """The entry an agency (or the broker) signs and is sealed to at ``now``."""
        item = self._current(agency, now=now, need_encryption=False)
        return None if item is None else item.entry

    def entry(self, agency: str, kid: str) -> DirectoryEntry | None:
        """The winning verified entry for this agency and key id, whatever its validity."""
        item = self._held.get((agency, kid))
        return None if item is None else item.entry

    def entries(self) -> list[DirectoryEntry]:
        """Every winning verified entry, ordered by agency and then key id."""
        return [self._held[k].entry for k in sorted(self._held)]

    def signed_entries(self) -> list[SignedDirectoryEntry]:
        """Every winning entry as the root signed it, ordered by agency and key id.

        What a directory server hands on, so that each client verifies the
        entries itself against the root it pinned.
        """
        return [item.signed for k in sorted(self._held) if (item := self._held[k]).signed]

    def agencies(self) -> list[str]:
        """Every agency id with an entry, the broker's included, sorted."""
        return sorted(self._by_agency)

    def agency_type(self, agency: str) -> AgencyType | None:
        """The type of an agency, or None if the directory does not know it."""
        items = self._by_agency.get(agency)
        return None if not items else items[0].entry.agency_type

    def broker_agency(self) -> str | None:
        """The directory id of the area's broker, if exactly one entry set is of type broker."""
        brokers = [a for a, items in self._by_agency.items() if _is_broker(items)]
        return brokers[0] if len(brokers) == 1 else None

    def broker_signing_key(
        self, *, created: datetime, now: datetime, kid: str | None = None
    ) -> Ed25519PublicKey | None:
        """The broker's verification key for something it signed at ``created``.

        With ``kid``, the same rule as :meth:`signing_key`; without, the broker
        key whose sealing window holds ``created`` (the newest if several do).
        """
        broker = self.broker_agency()
        if broker is None:
            return None
        if kid is not None:
            return self.signing_key(broker, kid, created=created, now=now)
        candidates = [
            i.entry.kid
            for i in self._by_agency[broker]
            if self.signing_key(broker, i.entry.kid, created=created, now=now) is not None
        ]
        if not candidates:
            return None
        best = max(
            (self._held[(broker, k)] for k in candidates),
            key=lambda i: (i.entry.valid_from, i.entry.issued_at, i.entry.kid),
        )
        return best.signing_key


def _is_broker(items: Iterable[_Held]) -> bool:
    return any(i.entry.agency_type is AgencyType.BROKER for i in items)


def load_bundle(path: Path) -> DirectoryBundle:
    """Read a directory bundle file; it is not verified until a Directory is built from it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DirectoryError(f"{path}: cannot read the directory bundle: {exc.strerror}") from exc
    try:
        return DirectoryBundle.model_validate_json(data)
    except ValidationError as exc:
        fields = ", ".join(
            ".".join(str(p) for p in e["loc"]) or "(top level)" for e in exc.errors()
        )
        raise DirectoryError(f"{path}: not a valid directory bundle ({fields})") from exc


def write_bundle(path: Path, bundle: DirectoryBundle) -> None:
    """Write a directory bundle atomically (readable by all: it holds public keys only)."""
    data = (bundle.model_dump_json(indent=2) + "\n").encode("utf-8")
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).chmod(0o644)
            Path(tmp).replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
    except OSError as exc:
        raise DirectoryError(f"{path}: cannot write the directory bundle: {exc.strerror}") from exc

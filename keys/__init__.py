"""Identities and keys: directory certification, pseudonyms and the envelope.

Depends on ``schemas`` only. The envelope's pure functions take keys, time and
randomness as arguments; nothing in this package reads the clock on its own
except the CLI and the file-backed key store. The names below are the public
surface; everything else may change.
"""

from keys.directory import Directory, canonical_json, sign_entry, verify_entry
from keys.envelope import (
    Opened,
    OpeningKey,
    RecipientKeys,
    Sealed,
    SenderKey,
    Verified,
    open_envelope,
    seal,
    verify,
)
from keys.errors import (
    AreaConfigError,
    DirectoryError,
    InvalidEnvelope,
    KeysError,
    KeyStoreError,
    PersonnummerError,
    ReplayRefused,
)
from keys.lookup import KeyLookup, SealingKey
from keys.personnummer import IdentityNumber, parse_identity_number
from keys.pseudonym import PseudonymKey, child_pseudonym, pseudonym_from_text
from keys.replay import ClockWindow, MemorySeenIds, ReplayGuard, SeenIds
from keys.signed import (
    InvalidSignedPayload,
    sign_consent,
    sign_receipt,
    sign_revocation,
    verify_consent,
    verify_receipt,
    verify_revocation,
)

__all__ = [
    "AreaConfigError",
    "ClockWindow",
    "Directory",
    "DirectoryError",
    "IdentityNumber",
    "InvalidEnvelope",
    "InvalidSignedPayload",
    "KeyLookup",
    "KeyStoreError",
    "KeysError",
    "MemorySeenIds",
    "Opened",
    "OpeningKey",
    "PersonnummerError",
    "PseudonymKey",
    "RecipientKeys",
    "ReplayGuard",
    "ReplayRefused",
    "Sealed",
    "SealingKey",
    "SeenIds",
    "SenderKey",
    "Verified",
    "canonical_json",
    "child_pseudonym",
    "open_envelope",
    "parse_identity_number",
    "pseudonym_from_text",
    "seal",
    "sign_consent",
    "sign_entry",
    "sign_receipt",
    "sign_revocation",
    "verify",
    "verify_consent",
    "verify_entry",
    "verify_receipt",
    "verify_revocation",
]

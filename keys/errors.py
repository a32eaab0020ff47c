"""The error tree of ``keys``: one root, a stable code on every error.

::

    KeysError                  code                  http  meaning
    ├── InvalidEnvelope        envelope_invalid      400   opaque: no detail outward
    ├── ReplayRefused          replay_refused        409   .reason: replayed, too_old,
    │                                                      from_future or expired
    ├── ReplayStoreFull        replay_store_full     503   keys.replay: full, will not forget
    ├── CertificateRoleError   certificate_role      403   keys.ca: no or ambiguous role
    ├── CertificateRequestError certificate_request  400   keys.ca: must not be issued
    ├── PersonnummerError      personnummer_invalid  422   says what is wrong
    ├── KeyStoreError          key_store             500   missing file, wrong passphrase
    ├── AreaConfigError        area_config           500   names the file and field
    ├── PolicyError            policy_invalid        500   keys.policy: names the rule and field
    └── DirectoryError         directory_invalid     400   an entry failed to verify

Crypto failures are deliberately one opaque error (``InvalidEnvelope``) with a
fixed message: whether the signature, the key wrap, the content tag or the
header failed is written to the log, never returned to the caller, so that a
peer cannot use the answers as an oracle.
"""

from __future__ import annotations

from typing import ClassVar


class KeysError(Exception):
    """Root of every error raised by ``keys``."""

    code: ClassVar[str] = "keys_error"
    http_status: ClassVar[int] = 500


class InvalidEnvelope(KeysError):  # noqa: N818 - named for what it is, like Fernet's InvalidToken
    """The envelope failed to verify or open. Deliberately carries no detail."""

    code = "envelope_invalid"
    http_status = 400

    def __init__(self, detail: str = "unspecified") -> None:
        super().__init__("envelope could not be verified or opened")
        #: The precise reason, for this process's own log only; never sent to a peer.
        self.detail = detail


class ReplayRefused(KeysError):  # noqa: N818 - a refusal, not a fault
    """A message id was seen before, or its times fall outside the clock window."""

    code = "replay_refused"
    http_status = 409

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.reason = code

    @property
    def reason_code(self) -> str:
        """The stable reason code: replayed, too_old, from_future or expired."""
        return self.reason


class PersonnummerError(KeysError, ValueError):
    """A personnummer or samordningsnummer is malformed; the message says how."""

    code = "personnummer_invalid"
    http_status = 422


class KeyStoreError(KeysError):
    """Key material could not be read or written (missing, corrupt, wrong passphrase)."""

    code = "key_store"


class AreaConfigError(KeysError):
    """An area description is invalid; the message names the file and the field."""

    code = "area_config"


class DirectoryError(KeysError):
    """A directory entry failed to verify against the area root, or is unusable."""

    code = "directory_invalid"
    http_status = 400

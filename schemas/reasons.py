"""Stable reason codes for every refusal, rejection and failed delivery.

A reason code is part of the wire contract: it travels in rejected receipts,
is written to the audit log and is what an agency system branches on, so a
code, once published, keeps its meaning and its spelling. The texts in
``REASON_TEXT`` are for people (an operator, a security officer, the sending
agency's staff) and may be reworded; a code may not.

A reason never carries message content or a personnummer; where detail is
needed it goes to the broker's own log, never out to the sender. That is why
every failure to verify or decrypt an envelope is the one opaque
``envelope_invalid``.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    """Why the broker or a recipient adapter refused or could not deliver a message."""

    # One opaque code for every failed signature, decryption or malformed
    # envelope, so that a prober learns nothing about which check failed.
    ENVELOPE_INVALID = "envelope_invalid"
    # Over a size limit before parsing: refused without reading further.
    TOO_LARGE = "too_large"
    # The bytes are not JSON at all; distinct from a shape error so that an
    # integrator can tell a broken serializer from a contract mismatch.
    BAD_JSON = "bad_json"
    # Well-formed JSON that does not match the published JSON Schema.
    SCHEMA_INVALID = "schema_invalid"
    # The signed sender is not in the area directory. Reserved: never sent, since
    # PROTOCOL.md §4.5 reports it as envelope_invalid (the log has the detail).
    UNKNOWN_SENDER = "unknown_sender"
    # The sender's key id is unknown, not yet valid or past its rotation window.
    # Reserved like unknown_sender.
    SENDER_KEY_INVALID = "sender_key_invalid"
    # The AMQP user_id (validated by RabbitMQ) differs from the signed sender:
    # one agency's credentials must not speak for another.
    USER_ID_MISMATCH = "user_id_mismatch"
    # A message id seen before; at-least-once delivery makes this normal for
    # retries, so the sender can treat it as "already have it".
    REPLAYED = "replayed"
    # Created too long ago to fall inside the replay window.
    TOO_OLD = "too_old"
    # Created further in the future than clock skew allows.
    FROM_FUTURE = "from_future"
    # Past its own ``expires`` before it could be accepted or handed over.
    EXPIRED = "expired"
    # A recipient agency is not in the area directory.
    UNKNOWN_RECIPIENT = "unknown_recipient"
    # A recipient's key id is not a current encryption key of that agency.
    RECIPIENT_KEY_UNKNOWN = "recipient_key_unknown"
    # Neither a consent nor a legal basis was given.
    NO_BASIS = "no_basis"
    # The named consent is not registered with the broker.
    CONSENT_MISSING = "consent_missing"
    # The consent's validity ended before the message was checked.
    CONSENT_EXPIRED = "consent_expired"
    # The consent's validity has not begun yet.
    CONSENT_NOT_YET_VALID = "consent_not_yet_valid"
    # Revoked with effect forward; also stops messages still in flight,
    # because policy is checked again before hand-over.
    CONSENT_REVOKED = "consent_revoked"
    # The sender or a recipient is not among the consent's parties.
    CONSENT_SCOPE_PARTY = "consent_scope_party"
    # The message's purpose is not among the consent's purposes.
    CONSENT_SCOPE_PURPOSE = "consent_scope_purpose"
    # The consent is about another child than the message.
    CONSENT_CHILD_MISMATCH = "consent_child_mismatch"
    # The legal basis exists but does not allow this kind of message.
    BASIS_NOT_ALLOWED_FOR_KIND = "basis_not_allowed_for_kind"
    # The legal basis does not allow sharing to this type of agency
    # (e.g. OSL 10 kap. 28 § allows reporting concern to social services only).
    RECIPIENT_TYPE_NOT_ALLOWED = "recipient_type_not_allowed"
    # The legal basis does not allow this type of agency to send.
    SENDER_TYPE_NOT_ALLOWED = "sender_type_not_allowed"
    # A condition of the policy rule does not hold (e.g. the child is not a minor).
    CONDITION_NOT_MET = "condition_not_met"
    # The legal basis allows this kind, sender and recipients, but only for
    # other purposes than the message names.
    BASIS_NOT_ALLOWED_FOR_PURPOSE = "basis_not_allowed_for_purpose"
    # RabbitMQ's quorum-queue delivery limit was reached: the recipient kept failing.
    DELIVERY_LIMIT = "delivery_limit"
    # Accepted, but no recipient could take it (dead-lettered for another reason).
    UNDELIVERABLE = "undeliverable"
    # Handed over, but nobody opened it before it expired.
    NOT_OPENED = "not_opened"
    # The policy could not be loaded or evaluated: fail closed, never open.
    POLICY_UNAVAILABLE = "policy_unavailable"
    # A fault on the broker's side; the detail is in the broker's log only.
    INTERNAL_ERROR = "internal_error"
    # A receipt names a message the broker never accepted.
    UNKNOWN_MESSAGE = "unknown_message"
    # A receipt does not match its message: wrong digest, or its signer is not a recipient.
    RECEIPT_MISMATCH = "receipt_mismatch"
    # Consent registration (refused before a consent is stored, never for a message):
    # not every custodial guardian consented (all of them must; joint custody means two).
    CONSENT_GUARDIAN_MISSING = "consent_guardian_missing"
    # The child's own view was not recorded; its age decides what the consent needs.
    CONSENT_CHILD_VIEW_MISSING = "consent_child_view_missing"
    # The child is old or mature enough that its own consent is needed, and it
    # was not given (OSL 12 kap. 3 §, by the ages in the policy file).
    CONSENT_CHILD_CONSENT_MISSING = "consent_child_consent_missing"
    # The validity is in the past, longer than the policy allows, or backdated.
    CONSENT_VALIDITY_INVALID = "consent_validity_invalid"
    # A party named by agency id is not in the area directory, or is the broker.
    CONSENT_UNKNOWN_PARTY = "consent_unknown_party"


REASON_TEXT: dict[ReasonCode, str] = {
    ReasonCode.UNKNOWN_MESSAGE: (
        "The receipt names a message the broker has not accepted; check the message id."
    ),
    ReasonCode.RECEIPT_MISMATCH: (
        "The receipt does not match the message: only a recipient may acknowledge it, "
        "and only with the digest of the envelope it received."
    ),
    ReasonCode.ENVELOPE_INVALID: (
        "The envelope could not be verified or decrypted; check the signing key, "
        "the recipient keys and the encoding, and send it again."
    ),
    ReasonCode.TOO_LARGE: (
        "The message is larger than the broker accepts; shorten the content or send "
        "attachments another way."
    ),
    ReasonCode.BAD_JSON: "The message is not valid JSON; fix the sending system's serializer.",
    ReasonCode.SCHEMA_INVALID: (
        "The message does not match the published JSON Schema; validate it against "
        "schemas/json before sending."
    ),
    ReasonCode.UNKNOWN_SENDER: (
        "The sending agency is not in the area directory; ask the area administrator "
        "to register it."
    ),
    ReasonCode.SENDER_KEY_INVALID: (
        "The sender's key is unknown, not yet valid or retired; sign with the agency's "
        "current key from the directory."
    ),
    ReasonCode.USER_ID_MISMATCH: (
        "The connection's user does not match the signed sender; send only with the "
        "agency's own credentials."
    ),
    ReasonCode.REPLAYED: (
        "A message with this id was already received; do not resend it, mint a new id "
        "for a new message."
    ),
    ReasonCode.TOO_OLD: (
        "The message was created too long ago to be accepted; create it again with a "
        "new id and the current time."
    ),
    ReasonCode.FROM_FUTURE: (
        "The message's creation time is in the future; correct the sending system's clock."
    ),
    ReasonCode.EXPIRED: (
        "The message expired before it could be delivered; send a new message if it "
        "is still needed."
    ),
    ReasonCode.UNKNOWN_RECIPIENT: (
        "A recipient agency is not in the area directory; check the recipient's agency id."
    ),
    ReasonCode.RECIPIENT_KEY_UNKNOWN: (
        "A recipient key is not current; refresh the directory and encrypt to the "
        "recipient's current key."
    ),
    ReasonCode.NO_BASIS: (
        "The message names neither a consent nor a legal basis; add the one that "
        "allows this sharing."
    ),
    ReasonCode.CONSENT_MISSING: (
        "The named consent is not registered; register the signed consent before sending."
    ),
    ReasonCode.CONSENT_EXPIRED: (
        "The consent is no longer valid; obtain and register a new consent from the guardians."
    ),
    ReasonCode.CONSENT_NOT_YET_VALID: (
        "The consent is not valid yet; wait until its start date or correct the consent."
    ),
    ReasonCode.CONSENT_REVOKED: (
        "The consent has been revoked; do not share under it, and obtain a new consent "
        "or use a legal basis."
    ),
    ReasonCode.CONSENT_SCOPE_PARTY: (
        "The consent does not cover the sender or a recipient; send only to agencies "
        "named in the consent."
    ),
    ReasonCode.CONSENT_SCOPE_PURPOSE: (
        "The consent does not cover this purpose; choose a purpose the consent allows "
        "or obtain a wider consent."
    ),
    ReasonCode.CONSENT_CHILD_MISMATCH: (
        "The consent is about another child; use the consent registered for this child."
    ),
    ReasonCode.BASIS_NOT_ALLOWED_FOR_KIND: (
        "The legal basis does not allow this kind of message; use a consent or the "
        "basis that covers this kind."
    ),
    ReasonCode.RECIPIENT_TYPE_NOT_ALLOWED: (
        "The legal basis does not allow sharing with this type of agency; remove that "
        "recipient or use a consent."
    ),
    ReasonCode.SENDER_TYPE_NOT_ALLOWED: (
        "The legal basis does not allow your type of agency to send this; use a consent "
        "or ask the agency that holds the duty."
    ),
    ReasonCode.BASIS_NOT_ALLOWED_FOR_PURPOSE: (
        "The legal basis does not allow sharing for this purpose; choose the purpose the "
        "basis covers or use a consent."
    ),
    ReasonCode.CONDITION_NOT_MET: (
        "A condition of the legal basis is not met; check the rule's legal reference "
        "and use a consent instead."
    ),
    ReasonCode.DELIVERY_LIMIT: (
        "The recipient failed to take the message too many times; contact the "
        "recipient agency and send again once it is fixed."
    ),
    ReasonCode.UNDELIVERABLE: (
        "The message could not be delivered to any recipient; contact the recipient "
        "agency by other means."
    ),
    ReasonCode.NOT_OPENED: (
        "Nobody at the recipient opened the message before it expired; contact the "
        "recipient agency by other means."
    ),
    ReasonCode.POLICY_UNAVAILABLE: (
        "The broker could not check the sharing rules and refused to guess; send again "
        "later or contact the area's operator."
    ),
    ReasonCode.INTERNAL_ERROR: (
        "The broker failed on its side; send again later and contact the area's "
        "operator if it persists."
    ),
    ReasonCode.CONSENT_GUARDIAN_MISSING: (
        "Not every custodial guardian has consented; obtain and record the consent of "
        "each guardian with custody, both of them under joint custody."
    ),
    ReasonCode.CONSENT_CHILD_VIEW_MISSING: (
        "The child's own view is not recorded; record the child's age, maturity and "
        "whether the child consents."
    ),
    ReasonCode.CONSENT_CHILD_CONSENT_MISSING: (
        "The child is old or mature enough that the child's own consent is needed; "
        "obtain it or share under a legal basis instead."
    ),
    ReasonCode.CONSENT_VALIDITY_INVALID: (
        "The consent's validity is in the past, longer than the area's policy allows or "
        "backdated; register it from today for a shorter period."
    ),
    ReasonCode.CONSENT_UNKNOWN_PARTY: (
        "A party of the consent is not an agency of the area that can share; check the "
        "agency id in the directory or name the party by agency type."
    ),
}


#: The reasons a recipient's adapter may give in a ``rejected`` receipt: it
#: could not verify or open the message, the content does not fit its kind or
#: names another child than the header, or the policy check it runs again
#: before hand-over refuses (DESIGN.md: a revocation stops what is in flight).
RECIPIENT_REJECT_REASONS: frozenset[ReasonCode] = frozenset(
    {
        ReasonCode.ENVELOPE_INVALID,
        ReasonCode.SCHEMA_INVALID,
        ReasonCode.EXPIRED,
        ReasonCode.CONSENT_MISSING,
        ReasonCode.CONSENT_EXPIRED,
        ReasonCode.CONSENT_REVOKED,
        ReasonCode.CONSENT_CHILD_MISMATCH,
        ReasonCode.CONDITION_NOT_MET,
    }
)

"""The consent registry and the policy the broker applies at acceptance.

Consents are registered and revoked over HTTP (``broker.http``), each body
signed by the agency that registers or revokes it. ``ConsentRegistry``
verifies the signature against the directory, checks the record against the
policy's rules (``keys.policy.validate_consent``), stores it, and updates
``ConsentBook``: the in-memory view every routing decision reads, so that a
revocation takes effect for the very next message. ``ConsentPolicy`` is the
``broker.policy.Policy`` the pipeline calls: the pure ``keys.policy.decide``
over the book.

Revocation is forward only: a revoked consent is never restored, and the
first revocation's time stands.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import structlog
from pydantic import ValidationError

from broker.audit.entry import consent_entry
from broker.errors import BadRequest, BrokerError, Forbidden, NotFound
from broker.policy import Decision
from broker.store import ConsentRow, SqlStore
from keys.ca import PeerIdentity, Role
from keys.directory import Directory
from keys.policy import (
    ConsentProblem,
    ConsentState,
    PolicyFile,
    consent_allows_party,
    decide,
    validate_consent,
)
from keys.signed import InvalidSignedPayload, verify_consent, verify_revocation
from schemas.common import b64url_decode
from schemas.consent import ConsentRecord, ConsentRevocation, SignedConsent, SignedRevocation
from schemas.envelope import ProtectedHeader

_log = structlog.get_logger("broker.consents")


class ConsentRefused(BrokerError):  # noqa: N818 - a refusal with reasons, named for what it is
    """A registration or revocation the broker will not take; ``problems`` say why."""

    code = "consent_refused"
    http_status = 422

    def __init__(self, problems: Sequence[ConsentProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = tuple(problems)

    def body(self) -> dict[str, dict[str, object]]:
        """The error body, with each problem's stable code, field and sentence."""
        body = super().body()
        body["error"]["problems"] = [
            {"code": p.code.value, "field": p.field, "message": p.message} for p in self.problems
        ]
        return body


@dataclass
class ConsentBook:
    """Every known consent by id, as the policy reads it. Only the registry writes it."""

    states: dict[str, ConsentState] = field(default_factory=dict)
    #: The ids of each child's consents, first put first (a dict as an ordered set).
    by_child: dict[str, dict[str, None]] = field(default_factory=dict)

    def put(self, row: ConsentRow) -> ConsentState:
        """Add or refresh one consent from its stored row (signature already verified)."""
        record = ConsentRecord.model_validate_json(b64url_decode(row.payload))
        state = ConsentState(record=record, revoked_at=row.revoked_at)
        self.states[row.consent_id] = state
        self.by_child.setdefault(record.child, {})[row.consent_id] = None
        return state

    def of_child(self, child: str) -> list[ConsentState]:
        """The consents about ``child``, in the order they were first put (oldest first)."""
        return [self.states[consent_id] for consent_id in self.by_child.get(child, ())]


@dataclass(frozen=True)
class ConsentPolicy:
    """The broker's policy at acceptance: ``keys.policy.decide`` over the consent book."""

    policy: PolicyFile
    book: ConsentBook

    def decide(self, header: ProtectedHeader, *, directory: Directory, now: datetime) -> Decision:
        """Allow with the rule and legal reference, or refuse with the engine's reason."""
        verdict = decide(
            header, directory=directory, consents=self.book.states, policy=self.policy, now=now
        )
        if verdict.allowed and verdict.rule is not None:
            return Decision.allow(verdict.rule, verdict.legal_ref)
        return Decision(allowed=False, reason=verdict.reason)


#: Tells others of a registration or revocation: ("registered" | "revoked", stored row, parties).
Broadcast = Callable[[str, ConsentRow, Sequence[str]], Awaitable[None]]


@dataclass
class ConsentRegistry:
    """Registers and revokes consents: verify, validate, store, then update the book."""

    store: SqlStore
    book: ConsentBook
    policy: PolicyFile
    directory: Callable[[], Directory]
    broadcast: Broadcast | None = None  # tells other broker instances and adapters

    async def load(self) -> int:
        """Fill the book from the store (at start); returns how many consents it holds."""
        for row in await self.store.consents():
            self.book.put(row)
        return len(self.book.states)

    async def register(self, body: bytes, *, peer: PeerIdentity, now: datetime) -> ConsentState:
        """Register a signed consent sent by ``peer``; ConsentRefused says what to fix."""
        signed = _parse(SignedConsent, body)
        directory = self.directory()
        try:
            record = verify_consent(signed, keys=directory, now=now)
        except InvalidSignedPayload as exc:
            _log.warning("consent_refused", reason="signature", detail=exc.detail)
            raise BadRequest("the consent's signature could not be verified") from None
        if peer.role is not Role.ADAPTER or peer.agency != record.registered_by.agency:
            raise Forbidden("only the registering agency's own adapter may register its consent")
        problems = validate_consent(record, directory=directory, policy=self.policy, now=now)
        if problems:
            _log.info("consent_refused", consent_id=record.id, codes=[p.code for p in problems])
            raise ConsentRefused(problems)
        row = ConsentRow(
            consent_id=record.id,
            child=record.child,
            payload=signed.payload,
            signature=signed.signature,
            valid_from=record.valid_from,
            valid_until=record.valid_until,
            registered_at=now,
        )
        parties = self._parties(ConsentState(record=record), directory)
        audit = consent_entry(
            revoked=False,
            consent_id=record.id,
            child=record.child,
            agency=record.registered_by.agency,
            staff_id=record.registered_by.staff_id,
            parties=parties,
            at=now,
            digest=record.document_digest,
        )
        if not await self.store.register_consent(row, audit=audit):
            # Registered before: the same body again is idempotent, another body is refused.
            stored = await self.store.consents(child=record.child)
            same = [r for r in stored if r.consent_id == record.id]
            if not same or same[0].payload != signed.payload:
                raise BadRequest("a different consent is already registered under this id")
            row = same[0]
        state = self.book.put(row)
        _log.info("consent_registered", consent_id=record.id, by=record.registered_by.agency)
        if self.broadcast is not None:
            await self.broadcast("registered", row, self._parties(state, directory))
        return state

    async def revoke(
        self, consent_id: str, body: bytes, *, peer: PeerIdentity, now: datetime
    ) -> ConsentState:
        """Revoke a consent with a signed revocation from a party to it; effect is immediate."""
        signed = _parse(SignedRevocation, body)
        directory = self.directory()
        try:
            revocation: ConsentRevocation = verify_revocation(signed, keys=directory, now=now)
        except InvalidSignedPayload as exc:
            _log.warning("revocation_refused", reason="signature", detail=exc.detail)
            raise BadRequest("the revocation's signature could not be verified") from None
        if revocation.consent_id != consent_id:
            raise BadRequest("the revocation names another consent than the URL")
        state = self.book.states.get(consent_id)
        if state is None:
            raise NotFound()
        if (
            peer.role is not Role.ADAPTER
            or peer.agency != revocation.by.agency
            or not consent_allows_party(state.record, revocation.by.agency, directory)
        ):
            raise NotFound()  # not a party: do not reveal that the consent exists
        # Forward only: effective now, whatever time the revocation claims.
        audit = consent_entry(
            revoked=True,
            consent_id=consent_id,
            child=state.record.child,
            agency=revocation.by.agency,
            staff_id=revocation.by.staff_id,
            parties=self._parties(state, directory),
            at=now,
        )
        row = await self.store.revoke_consent(
            consent_id,
            revoked_at=now,
            payload=signed.payload,
            signature=signed.signature,
            audit=audit,
        )
        if row is None:
            raise NotFound()
        state = self.book.put(row)
        _log.info("consent_revoked", consent_id=consent_id, by=revocation.by.agency)
        if self.broadcast is not None:
            await self.broadcast("revoked", row, self._parties(state, directory))
        return state

    @staticmethod
    def _parties(state: ConsentState, directory: Directory) -> list[str]:
        """Every agency of the area the consent covers (by id or by type)."""
        return [
            agency
            for agency in directory.agencies()
            if agency != directory.broker_agency()
            and consent_allows_party(state.record, agency, directory)
        ]

    async def apply_notice(self, body: bytes, *, now: datetime) -> None:
        """Bring the book up to date from another instance's notice on the control exchange.

        The signed consent (and revocation) in the notice are verified like a
        registration, so a forged notice changes nothing. A malformed one is
        logged and dropped: the store stays the record of truth, reloaded at start.
        """
        try:
            notice = json.loads(body)
            signed = SignedConsent.model_validate(notice["consent"])
            record = verify_consent(signed, keys=self.directory(), now=now)
            revoked_at = notice.get("revoked_at")
            revocation = notice.get("revocation")
            if revocation is not None:
                verify_revocation(
                    SignedRevocation.model_validate(revocation), keys=self.directory(), now=now
                )
        except (ValueError, KeyError, TypeError, ValidationError, InvalidSignedPayload) as exc:
            _log.warning("control_notice_dropped", cause=type(exc).__name__)
            return
        known = self.book.states.get(record.id)
        if known is not None and known.revoked_at is not None:
            return  # forward only: nothing un-revokes a consent
        self.book.put(
            ConsentRow(
                consent_id=record.id,
                child=record.child,
                payload=signed.payload,
                signature=signed.signature,
                valid_from=record.valid_from,
                valid_until=record.valid_until,
                registered_at=now,
                revoked_at=None if revocation is None else datetime.fromisoformat(str(revoked_at)),
            )
        )

    def for_child(self, child: str, *, peer: PeerIdentity) -> list[ConsentState]:
        """The consents about ``child`` that the peer's agency is a party to."""
        directory = self.directory()
        if peer.role is Role.ADAPTER and peer.agency is not None:
            agency = peer.agency
            return [
                s
                for s in self.book.of_child(child)
                if consent_allows_party(s.record, agency, directory)
            ]
        return []


_Signed = TypeVar("_Signed", SignedConsent, SignedRevocation)


def _parse(model: type[_Signed], body: bytes) -> _Signed:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(body)" for e in exc.errors())
        raise BadRequest(f"not a signed consent body; check: {fields}") from None

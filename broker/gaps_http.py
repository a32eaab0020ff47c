"""The open-gaps view over HTTP: late or nearly late matters, and closing one by decision.

``GET /v1/gaps`` lists open matters due within ``within_hours`` (default 24)
or already late, most urgent first, with how late each is and the rule: an
adapter's certificate sees the matters its agency sends or receives, an
operator's or security officer's sees the area. ``POST /v1/gaps/{id}/handled``
closes one matter without an answer, for a reason from a closed list (the
broker stores no free text); a party to the matter or an operator may, and
the decision is audited.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from broker.audit.entry import handled_entry
from broker.errors import BadRequest, Forbidden, NotFound
from broker.http import CLOCK, PEER
from broker.openapi import PATH_GAP_HANDLED, PATH_GAPS
from broker.store import DeadlineRow, SqlStore
from keys.ca import PeerIdentity, Role
from schemas.audit import HandledReason

STORE: Final = web.AppKey[SqlStore]("gaps_store")
#: The widest look ahead a caller may ask for.
MAX_WITHIN_HOURS: Final = 24 * 30
#: ASCII digits only, and few enough for a 64-bit column: ``str.isdigit`` also takes "²",
#: which ``int`` refuses, and a longer number overflows the database driver.
_WHOLE_NUMBER: Final = re.compile(r"^[0-9]{1,18}$")


class HandledBody(BaseModel):
    """Why the matter is closed without an answer, and who decided (their staff id)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: HandledReason
    staff_id: str


def _sees_area(peer: PeerIdentity) -> bool:
    return peer.role in (Role.OPERATOR, Role.SECURITY_OFFICER)


def _party(peer: PeerIdentity, matter: DeadlineRow) -> bool:
    return (
        peer.role is Role.ADAPTER
        and peer.agency is not None
        and (peer.agency == matter.sender or peer.agency in matter.recipients)
    )


def _out(matter: DeadlineRow, now: datetime) -> dict[str, object]:
    late = (now - matter.due_at).total_seconds()
    return {
        "id": matter.id,
        "message_id": matter.message_id,
        "rule": matter.rule,
        "kind": matter.kind,
        "sender": matter.sender,
        "recipient": matter.agency,
        "child": matter.child,
        "due_at": matter.due_at.isoformat(),
        "late_seconds": max(0, int(late)),
        "state": "late" if late >= 0 else "near",
        "escalations": matter.attempts,
    }


async def _gaps(request: web.Request) -> web.Response:
    peer = request[PEER]
    if not (_sees_area(peer) or (peer.role is Role.ADAPTER and peer.agency)):
        raise Forbidden("only adapters, operators and security officers see gaps")
    raw = request.query.get("within_hours", "24")
    if not _WHOLE_NUMBER.fullmatch(raw) or not 0 <= int(raw) <= MAX_WITHIN_HOURS:
        raise BadRequest(f"within_hours must be a whole number from 0 to {MAX_WITHIN_HOURS}")
    now = request.app[CLOCK]()
    horizon = now + timedelta(hours=int(raw))
    agency = None if _sees_area(peer) else peer.agency
    matters = await request.app[STORE].open_matters(agency=agency, due_by=horizon)
    body = {"matters": [_out(m, now) for m in matters], "at": now.isoformat()}
    return web.json_response(body, dumps=json.dumps, headers={"Cache-Control": "no-store"})


async def _handled(request: web.Request) -> web.Response:
    peer = request[PEER]
    raw_id = request.match_info["id"]
    if not _WHOLE_NUMBER.fullmatch(raw_id):
        raise NotFound()
    store = request.app[STORE]
    matter = await store.deadline(int(raw_id))
    if matter is None or not (_party(peer, matter) or peer.role is Role.OPERATOR):
        raise NotFound()  # not a party: do not reveal that the matter exists
    try:
        body = HandledBody.model_validate_json(await request.read())
    except ValidationError:
        raise BadRequest(
            'the body must be {"reason": one of '
            + ", ".join(r.value for r in HandledReason)
            + ', "staff_id": "…"}'
        ) from None
    now = request.app[CLOCK]()
    entry = handled_entry(
        message_id=matter.message_id,
        rule=matter.rule,
        child=matter.child,
        agency=peer.agency,
        actor=body.staff_id,
        reason=body.reason,
        at=now,
    )
    closed = await store.handle_deadline(matter.id, at=now, audit=entry)
    if closed is None:
        raise NotFound()  # closed already (answered, or handled by someone else)
    return web.json_response({"id": matter.id, "state": "handled"}, dumps=json.dumps)


def add_gap_routes(app: web.Application, store: SqlStore) -> None:
    """Mount the gaps view on the broker's mTLS app."""
    app[STORE] = store
    app.router.add_get(PATH_GAPS, _gaps)
    app.router.add_post(PATH_GAP_HANDLED, _handled)

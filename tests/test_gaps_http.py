"""GET /v1/gaps and POST /v1/gaps/{id}/handled over mutual TLS, on the real store.

An agency sees the late matters it sends or receives; an operator sees the
area; closing a matter without an answer takes a reason from a closed list
and is audited.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.audit.log import AuditLog
from broker.audit.ports import AuditFilter
from broker.gaps_http import add_gap_routes
from broker.http import create_app, serve_http
from broker.metrics import Metrics
from broker.records import MessageRecord, Outcome
from broker.store import SqlStore
from schemas.audit import AuditEvent
from tests.audit_fakes import BUP, OFFICER, OPERATOR, SCHOOL, SOCIAL, T0, Pki, make_pki
from tests.support import Agency

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NOW = T0 + timedelta(days=3)


def _record(**changes: Any) -> MessageRecord:
    record = MessageRecord(
        message_id=str(uuid.uuid4()),
        digest="d" * 64,
        kind="referral",
        sender=SCHOOL,
        sender_kid="k1",
        child="c" * 64,
        basis_type="legal",
        basis_ref="osl-10-28",
        purpose="referral",
        thread=str(uuid.uuid4()),
        in_reply_to=None,
        created=T0,
        expires=T0 + timedelta(days=30),
        received_at=T0,
        outcome=Outcome.ACCEPTED,
        reason=None,
        rule="consent.sharing",
        legal_ref="OSL 12 kap. 2 §",
        recipients=(SOCIAL,),
    )
    return replace(record, **changes)


@pytest.fixture
async def served(
    store: SqlStore, tmp_path: Path
) -> AsyncIterator[tuple[str, Pki, SqlStore, list[str]]]:
    """The broker app with the gaps routes; two matters: school→social late, school→BUP near."""
    pki = make_pki(tmp_path)
    late, near = _record(), _record(recipients=(BUP,))
    for record in (late, near):
        await store.record_decision(record, [])
    await store.open_deadlines(
        [
            (late.message_id, "referral.not-answered", SOCIAL, NOW - timedelta(hours=5)),
            (near.message_id, "referral.not-answered", BUP, NOW + timedelta(hours=3)),
        ]
    )
    app = create_app(
        store=store,
        directory=_Empty,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: NOW,
        with_gaps=True,
    )
    add_gap_routes(app, store)
    runner = await serve_http(app, host="127.0.0.1", port=0, ssl_context=pki.server())
    try:
        yield (
            f"https://localhost:{runner.addresses[0][1]}",
            pki,
            store,
            [late.message_id, near.message_id],
        )
    finally:
        await runner.cleanup()


class _Empty:
    area = "lidingo-demo"
    root_key = ""

    @staticmethod
    def signed_entries() -> list[Any]:
        return []


async def _get(base: str, pki: Pki, who: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + path, ssl=pki.client(who)) as r,
    ):
        return r.status, await r.json()


async def _post(base: str, pki: Pki, who: str, path: str, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + path, json=body, ssl=pki.client(who)) as r,
    ):
        return r.status, await r.json()


async def test_each_agency_sees_its_own_gaps_most_urgent_first(served: Any) -> None:
    """Social services sees its late matter; BUP its near one; an operator the area, late first."""
    base, pki, _store, (late, near) = served
    status, body = await _get(base, pki, SOCIAL, "/v1/gaps")
    assert status == 200
    assert [(m["message_id"], m["state"], m["late_seconds"]) for m in body["matters"]] == [
        (late, "late", 5 * 3600)
    ]
    _, body = await _get(base, pki, BUP, "/v1/gaps")
    assert [(m["message_id"], m["state"]) for m in body["matters"]] == [(near, "near")]
    _, body = await _get(base, pki, BUP, "/v1/gaps?within_hours=1")
    assert body["matters"] == [], "not yet near enough"
    _, body = await _get(base, pki, OPERATOR, "/v1/gaps")
    assert [m["message_id"] for m in body["matters"]] == [late, near]
    _, body = await _get(base, pki, SCHOOL, "/v1/gaps")
    assert len(body["matters"]) == 2, "the sender sees both of its matters"


async def test_bad_parameters_are_refused(served: Any) -> None:
    """within_hours must be a whole number in range."""
    base, pki, _store, _ids = served
    status, body = await _get(base, pki, OPERATOR, "/v1/gaps?within_hours=-1")
    assert status == 400
    assert "within_hours" in body["error"]["message"]


async def test_a_party_closes_a_matter_for_a_reason_and_it_is_audited(served: Any) -> None:
    """Social services closes its late matter (contact made); it leaves the view; the log says why."""
    base, pki, store, (late, _near) = served
    _, body = await _get(base, pki, SOCIAL, "/v1/gaps")
    (matter,) = body["matters"]
    status, _ = await _post(
        base,
        pki,
        BUP,
        f"/v1/gaps/{matter['id']}/handled",
        {"reason": "contact_made", "staff_id": "x"},
    )
    assert status == 404, "not a party: the matter does not exist for BUP"
    status, body = await _post(
        base,
        pki,
        SOCIAL,
        f"/v1/gaps/{matter['id']}/handled",
        {"reason": "gone", "staff_id": "handl-7"},
    )
    assert status == 400
    assert "contact_made" in body["error"]["message"], "the refusal lists the reasons"
    status, body = await _post(
        base,
        pki,
        SOCIAL,
        f"/v1/gaps/{matter['id']}/handled",
        {"reason": "contact_made", "staff_id": "handl-7"},
    )
    assert (status, body) == (200, {"id": matter["id"], "state": "handled"})
    _, body = await _get(base, pki, SOCIAL, "/v1/gaps")
    assert body["matters"] == []
    log = AuditLog(
        store.engine, signer=Agency.make("gaps-broker").sender, origin="backa.audit/test"
    )
    page = await log.search(
        AuditFilter(event=AuditEvent.DEADLINE_HANDLED), after=None, limit=5, officer=OFFICER
    )
    (entry,) = [e.entry for e in page.entries]
    assert (entry.message_id, entry.actor, entry.handled) == (late, "handl-7", "contact_made")

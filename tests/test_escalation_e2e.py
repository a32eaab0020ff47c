"""No child falls into the gap: an unanswered referral reaches the stödsamordnare, end to end.

The real broker with its watchdog (the shipped deploy/policy/deadlines.toml),
the real adapters and RabbitMQ; time moves only by handing the watchdog a
later "now", never by sleeping. The stödsamordnare is whoever accepted the
child's team invitation, as the broker learned from the signed receipts.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, expect

from adapters.broker_client import BrokerClient
from broker.audit.log import AuditLog
from broker.audit.ports import AuditFilter
from broker.gaps_http import add_gap_routes
from broker.http import create_app, serve_http
from broker.metrics import Metrics
from keys.ca import (
    Issued,
    Role,
    cert_to_pem,
    client_ssl_context,
    issue_client_cert,
    key_to_pem,
    load_cert_pem,
    load_key_pem,
)
from schemas.audit import AuditEvent
from tests.adapter_harness import (
    BUP,
    SCHOOL,
    SOCIAL,
    STAFF_PASSWORD,
    VARDCENTRAL,
    Area,
    Node,
    consent_body,
    example,
    pseudonym_of,
    until,
)
from tests.audit_fakes import _NoDirectory, make_pki

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

ALVA_CONSENT = "0193a5c2-7e41-7c1a-9b2e-4f6d8a1c3e50"
ALVA = "20121212-1212"
#: Past every shipped deadline of a referral (10 working days and Christmas).
LATER = timedelta(days=40)


async def _inbox(node: Node) -> list[dict[str, Any]]:
    status, body = await node.call("GET", "/v1/inbox")
    assert status == 200, body
    return list(body["messages"])


async def _with_team(area: Area) -> tuple[Node, Node, Node, Node]:
    """VC (the barnkontakt) invites; social services (the stödsamordnare) accepts."""
    vc, social, school, bup = [await area.start(a) for a in (VARDCENTRAL, SOCIAL, SCHOOL, BUP)]
    await area.register(
        consent_body(
            ALVA_CONSENT,
            pseudonym_of(ALVA),
            registrar=VARDCENTRAL,
            parties=[VARDCENTRAL, SOCIAL, SCHOOL, BUP],
            purposes=["referral", "team"],
            child_age=14,
            now=datetime.now(UTC),
        ),
        VARDCENTRAL,
    )
    invitation = example("canonical-team_invitation.json")
    invitation["recipients"] = [SOCIAL.agency]
    invitation_id = await vc.submit(invitation)
    await until(partial(_inbox, social), what="the invitation at social services")
    status, _ = await social.call(
        "POST",
        f"/v1/inbox/{invitation_id}/answer",
        {"staff_id": "stodsamordnare.eva", "answer": "accepted"},
    )
    assert status == 200

    async def known() -> bool:
        members, _ = await area.store.team_of(pseudonym_of(ALVA))
        return members == [SOCIAL.agency]

    await until(known, what="the broker learning who the stödsamordnare is")
    return vc, social, school, bup


async def _matters(area: Area, message_id: str) -> list[Any]:
    """The open deadlines of one message."""
    return [m for m in await area.store.open_matters() if m.message_id == message_id]


async def _referral_to_bup(area: Area, school: Node, bup: Node) -> str:
    referral = example("canonical-referral.json")
    referral["recipients"] = [BUP.agency]
    message_id = await school.submit(referral)
    await until(partial(_inbox, bup), what="the referral at BUP")

    async def watched() -> bool:
        return any(m.rule == "referral.not-answered" for m in await _matters(area, message_id))

    await until(watched, what="the not-answered deadline")
    return message_id


async def test_an_unanswered_referral_reaches_the_stodsamordnares_web_inbox(
    area: Area, browser: BrowserContext
) -> None:
    """BUP never answers the school's referral: the stödsamordnare sees the escalation in Chromium."""
    _vc, social, school, bup = await _with_team(area)
    message_id = await _referral_to_bup(area, school, bup)

    assert await area.watchdog.escalate_once(datetime.now(UTC)) == 0, "nothing is late yet"
    assert await area.watchdog.escalate_once(datetime.now(UTC) + LATER) == 1

    async def escalated() -> list[dict[str, Any]] | None:
        items = [i for i in await _inbox(social) if message_id in str(i) and "escalation" in str(i)]
        return items or None

    await until(escalated, what="the escalation at the stödsamordnare's adapter")

    page = await browser.new_page()
    await page.goto(str(social.client.make_url("/inbox/")))
    await page.get_by_label("Användar-id").fill("stodsamordnare.eva")
    await page.get_by_label("Lösenord").fill(STAFF_PASSWORD)
    await page.get_by_role("button", name="Logga in").click()
    await page.get_by_role("link", name=re.compile(r"^Eskalering")).first.click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Eskalering")
    await expect(page.get_by_text("referral.not-answered").first).to_be_visible()
    await expect(page.get_by_role("button", name="Skicka svar")).to_have_count(0)

    log = AuditLog(area.store.engine, signer=area.service.broker_key, origin="backa.audit/test")
    found = await log.search(
        AuditFilter(event=AuditEvent.ESCALATION), after=None, limit=10, officer="sakerhet-test"
    )
    assert [(e.entry.message_id, e.entry.recipients) for e in found.entries] == [
        (message_id, [SOCIAL.agency])
    ]


async def test_answering_before_the_deadline_cancels_it(area: Area) -> None:
    """BUP answers in time: nothing is escalated, however late the watchdog looks."""
    _vc, _social, school, bup = await _with_team(area)
    message_id = await _referral_to_bup(area, school, bup)
    status, _ = await bup.call(
        "POST",
        f"/v1/inbox/{message_id}/answer",
        {"staff_id": "bup.mottagning", "answer": "accepted"},
    )
    assert status == 200

    async def closed() -> bool:
        return not await _matters(area, message_id)

    await until(closed, what="the deadline closing on the answer")
    assert await area.watchdog.escalate_once(datetime.now(UTC) + LATER) == 0


async def test_a_restarted_watchdog_escalates_a_due_matter_once(area: Area) -> None:
    """The deadline lives in the store: a second watchdog (a restart) does not repeat it early."""
    _vc, _social, school, bup = await _with_team(area)
    await _referral_to_bup(area, school, bup)
    later = datetime.now(UTC) + LATER
    assert await area.watchdog.escalate_once(later) == 1
    restarted = replace(area.watchdog, instance="restarted")
    assert await restarted.escalate_once(later) == 0, "escalated once, then due only at the repeat"
    (matter,) = [m for m in await area.store.open_matters() if m.rule == "referral.not-answered"]
    assert matter.attempts == 1
    assert matter.due_at > later
    metrics = Metrics()
    watching = replace(area.watchdog, metrics=metrics, clock=lambda: later)
    await watching.observe()
    text = metrics.render().decode()
    assert 'backa_open_matters{rule="referral.not-answered"} 1.0' in text
    assert "backa_oldest_open_matter_seconds" in text


async def test_the_senders_web_inbox_lists_its_late_referral(
    area: Area, browser: BrowserContext, tmp_path: Path
) -> None:
    """The school's web inbox reads the broker's gaps view over mTLS: its referral to BUP is late."""
    _vc, _social, school, bup = await _with_team(area)
    message_id = await _referral_to_bup(area, school, bup)
    pki = make_pki(tmp_path)
    ca = Issued(
        key=load_key_pem(pki.layout.ca_key.read_bytes(), None),
        cert=load_cert_pem(pki.layout.ca_cert.read_bytes()),
    )
    issued = issue_client_cert(
        ca,
        common_name=SCHOOL.agency,
        role=Role.ADAPTER,
        agency=SCHOOL.agency,
        area="lidingo-demo",
        now=datetime.now(UTC),
    )
    (tmp_path / "school.crt").write_bytes(cert_to_pem(issued.cert))
    (tmp_path / "school.key").write_bytes(key_to_pem(issued.key, None))
    broker_app = create_app(
        store=area.store,
        directory=_NoDirectory,
        readiness=[],
        metrics=Metrics(),
        clock=lambda: datetime.now(UTC) + LATER,  # the referral has been waiting 40 days
        with_gaps=True,
    )
    add_gap_routes(broker_app, area.store)
    runner = await serve_http(broker_app, host="127.0.0.1", port=0, ssl_context=pki.server())
    try:
        school.runtime.gap_source = BrokerClient(
            f"https://localhost:{runner.addresses[0][1]}",
            client_ssl_context(
                cert_file=tmp_path / "school.crt",
                key_file=tmp_path / "school.key",
                ca_file=pki.layout.ca_cert,
                passphrase=None,
            ),
        ).gaps
        page = await browser.new_page()
        await page.goto(str(school.client.make_url("/inbox/")))
        await page.get_by_label("Användar-id").fill("stodsamordnare.eva")
        await page.get_by_label("Lösenord").fill(STAFF_PASSWORD)
        await page.get_by_role("button", name="Logga in").click()
        await expect(page.get_by_role("heading", name="Sena ärenden")).to_be_visible()
        late = page.get_by_role("row").filter(has_text=message_id[:8])
        await expect(late).to_contain_text("Försenat")
        await expect(late).to_contain_text(BUP.agency)
        gaps = await school.runtime.gaps()
        assert gaps is not None, "the broker's gaps view was reachable over mTLS"
        assert [(g.message_id, g.state) for g in gaps] == [(message_id, "late")]
    finally:
        await runner.cleanup()

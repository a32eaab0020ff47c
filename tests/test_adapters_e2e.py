"""Adapters end to end: agency systems → adapters → the real broker and RabbitMQ → adapters.

Every agency system here speaks its documented format (docs/adapters), with
the documented example requests; every step that the sender sees comes back
as a signed receipt that its adapter verified.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, expect

from adapters.runtime import AdapterRuntime
from broker.provision import RabbitmqctlRunner
from keys.envelope import seal
from keys.lookup import SealingKey
from keys.personnummer import parse_identity_number
from schemas.envelope import Kind, LegalBasis, Purpose
from tests.adapter_harness import (
    BUP,
    POLICE,
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
from tests.browser import serve

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

#: The consent of the documented school examples (docs/adapters/examples/school-*.json).
ALVA_CONSENT = "0193a5c2-7e41-7c1a-9b2e-4f6d8a1c3e50"
ALVA = "20121212-1212"
#: The consent of the documented FHIR example (health-servicerequest-consent.json).
SMALL_CHILD_CONSENT = "c305ab5a-a45a-4ee6-bfc4-901bd3a6c730"
SMALL_CHILD = "20220314-2381"


async def _register_alva(
    area: Area, *parties: Any, purposes: tuple[str, ...] = ("referral", "team")
) -> None:
    await area.register(
        consent_body(
            ALVA_CONSENT,
            pseudonym_of(ALVA),
            registrar=VARDCENTRAL,
            parties=[VARDCENTRAL, *parties],
            purposes=list(purposes),
            child_age=14,
            now=datetime.now(UTC),
        ),
        VARDCENTRAL,
    )


async def _inbox(node: Node) -> list[dict[str, Any]]:
    status, body = await node.call("GET", "/v1/inbox")
    assert status == 200, body
    return list(body["messages"])


def _statuses(events: list[tuple[str, str, str | None]], agency: str) -> list[str]:
    return [status for status, by, _ in events if by == agency]


async def test_a_referral_from_the_school_reaches_social_services_and_bup(area: Area) -> None:
    """The school's elevhälsa form goes to both; both answer; the school sees every step signed."""
    school, social, bup = [await area.start(a) for a in (SCHOOL, SOCIAL, BUP)]
    await _register_alva(area, SCHOOL, SOCIAL, BUP)
    message_id = await school.submit(example("school-referral.json"))

    for node in (social, bup):
        (item,) = await until(partial(_inbox, node), what=f"the referral at {node.agency.agency}")
        assert message_id in str(item)
    status, _ = await social.call(
        "POST", f"/v1/inbox/{message_id}/read", {"staff_id": "handlaggare.omar"}
    )
    assert status == 200
    status, _ = await social.call(
        "POST",
        f"/v1/inbox/{message_id}/answer",
        {"staff_id": "handlaggare.omar", "answer": "accepted"},
    )
    assert status == 200
    status, _ = await bup.call(
        "POST",
        f"/v1/inbox/{message_id}/answer",
        {"staff_id": "bup.mottagning", "answer": "declined", "decline_reason": "no_capacity"},
    )
    assert status == 200

    async def complete() -> list[tuple[str, str, str | None]] | None:
        events = await school.timeline(message_id)
        done = ("answered", BUP.agency, "declined") in events and (
            "answered",
            SOCIAL.agency,
            "accepted",
        ) in events
        return events if done else None

    events = await until(complete, what="both answers at the school")
    assert _statuses(events, SOCIAL.agency) == ["delivered", "handed_over", "read", "answered"]
    assert _statuses(events, BUP.agency) == ["delivered", "handed_over", "answered"]
    assert [s for s, by, _ in events if by not in (SOCIAL.agency, BUP.agency)] == ["accepted"]
    status, rendered = await school.call("GET", f"/v1/messages/{message_id}")
    assert status == 200
    assert message_id in str(rendered)


@pytest.mark.parametrize(
    ("sender", "recipient", "body", "kind", "consent"),
    [
        pytest.param(POLICE, SOCIAL, "police-concern_report.json", "concern_report", None, id="police-orosanmalan-to-social-services"),
        pytest.param(VARDCENTRAL, SOCIAL, "health-bundle-legal-basis.json", "referral", None, id="primary-care-fhir-bundle-to-social-services"),
        pytest.param(VARDCENTRAL, BUP, "health-servicerequest-consent.json", "referral", (SMALL_CHILD_CONSENT, SMALL_CHILD), id="primary-care-fhir-consent-to-bup"),
        pytest.param(SOCIAL, POLICE, "social_services-concern_report.json", "concern_report", None, id="social-services-suspected-crime-to-police"),
        pytest.param(SCHOOL, SOCIAL, "school-concern_report.json", "concern_report", None, id="school-orosanmalan-to-social-services"),
        pytest.param(BUP, SOCIAL, "health-bundle-legal-basis.json", "referral", None, id="bup-fhir-bundle-to-social-services"),
    ],
)  # fmt: skip
async def test_each_agency_type_sends_and_receives_in_its_own_format(
    area: Area,
    *,
    sender: Any,
    recipient: Any,
    body: str,
    kind: str,
    consent: tuple[str, str] | None,
) -> None:
    """A documented example from each agency type arrives, opened, in the recipient's format."""
    sending, receiving = await area.start(sender), await area.start(recipient)
    if consent is not None:
        consent_id, child = consent
        await area.register(
            consent_body(
                consent_id,
                pseudonym_of(child),
                registrar=sender,
                parties=[sender, recipient],
                purposes=["referral"],
                child_age=4,
                now=datetime.now(UTC),
            ),
            sender,
        )
    message_id = await sending.submit(example(body))
    (item,) = await until(lambda: _inbox(receiving), what="the message at the recipient")
    status, fetched = await receiving.call("GET", f"/v1/inbox/{message_id}")
    assert status == 200, fetched
    assert fetched == item
    assert (await receiving.runtime.get_received(message_id)).kind.value == kind

    async def handed_over() -> bool:
        events = await sending.timeline(message_id)
        return ("handed_over", recipient.agency, None) in events

    await until(handed_over, what="the handed_over receipt at the sender")


async def test_barnets_plan_from_the_stodsamordnare_reaches_every_agency_in_its_format(
    area: Area,
) -> None:
    """Social services' plan update arrives at the school, primary care and BUP, each rendered."""
    social = await area.start(SOCIAL)
    others = [await area.start(a) for a in (SCHOOL, VARDCENTRAL, BUP)]
    await _register_alva(area, SOCIAL, SCHOOL, BUP, purposes=("plan",))
    message_id = await social.submit(example("social_services-plan_update.json"))
    for node in others:
        (item,) = await until(partial(_inbox, node), what=f"the plan at {node.agency.agency}")
        assert message_id in str(item)
    school_item = (await _inbox(others[0]))[0]
    assert school_item["typ"] == "planuppdatering", "the school's own form, not the canonical one"
    assert (await others[0].runtime.get_received(message_id)).kind.value == "plan_update"


async def test_a_revocation_stops_every_message_still_in_the_recipients_queue(area: Area) -> None:
    """Messages routed while social services' adapter is down are refused there after revocation."""
    school = await area.start(SCHOOL)
    await _register_alva(area, SCHOOL, SOCIAL)
    referral = example("canonical-referral.json")
    referral["recipients"] = [SOCIAL.agency]
    sent = [await school.submit(referral) for _ in range(3)]

    async def all_routed() -> bool:
        timelines = [await school.timeline(m) for m in sent]
        return all(any(status == "accepted" for status, _, _ in t) for t in timelines)

    await until(all_routed, what="the broker routing all three")
    await area.revoke(ALVA_CONSENT, by=SOCIAL)
    social = await area.start(SOCIAL)

    async def all_refused() -> bool:
        timelines = [await school.timeline(m) for m in sent]
        return all(("rejected", SOCIAL.agency, "consent_revoked") in t for t in timelines)

    await until(all_refused, what="consent_revoked receipts for all three")
    assert await _inbox(social) == [], "nothing was handed over"
    for message_id in sent:
        assert (await social.runtime.store.received(message_id)).content is None  # type: ignore[union-attr]

    again = await school.submit(referral)

    async def refused_by_broker() -> bool:
        return (
            "rejected",
            area.service.broker_key.agency,
            "consent_revoked",
        ) in await school.timeline(again)

    await until(refused_by_broker, what="the broker refusing a message after revocation")


async def test_a_crash_between_store_and_ack_hands_over_exactly_once(area: Area) -> None:
    """The recipient adapter dies after storing, before acking: the agency system gets it once."""
    received: Counter[str] = Counter()

    async def agency_system(request: web.Request) -> web.Response:
        received[request.headers["Idempotency-Key"]] += 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", agency_system)
    crashed = asyncio.Event()

    class CrashesAfterStore(AdapterRuntime):
        async def _receive_envelope(self, body: bytes) -> None:
            await super()._receive_envelope(body)
            if not crashed.is_set():
                crashed.set()
                raise asyncio.CancelledError  # dies here: stored, never acked

    async with serve(app) as base_url:
        school = await area.start(SCHOOL)
        await area.start(
            POLICE,
            handover="webhook",
            webhook_url=f"{base_url}/hook",
            runtime_factory=CrashesAfterStore,
        )
        report = example("social_services-concern_report.json")
        social = await area.start(SOCIAL)
        message_id = await social.submit(report)
        await asyncio.wait_for(crashed.wait(), timeout=30)
        await area.stop(POLICE)  # the connection closes with the delivery unacked
        police = await area.start(POLICE, handover="webhook", webhook_url=f"{base_url}/hook")

        async def handed_over() -> bool:
            return ("handed_over", POLICE.agency, None) in await social.timeline(message_id)

        await until(handed_over, what="the handed_over receipt")
        await asyncio.sleep(1.0)  # room for a duplicate hand-over to show, if there were one
    assert received == Counter({message_id: 1})
    assert (await police.runtime.store.received(message_id)) is not None
    del school


async def test_submissions_while_rabbitmq_is_down_all_arrive_once_it_is_back(
    area: Area, rabbitmqctl: RabbitmqctlRunner
) -> None:
    """RabbitMQ stops; the agency system still gets 202s; every message arrives once it is back."""
    police, social = await area.start(POLICE), await area.start(SOCIAL)
    report = example("police-concern_report.json")
    await asyncio.to_thread(rabbitmqctl.run, ["stop_app"])
    try:
        sent = [await police.submit(report, key=f"anm-{i}") for i in range(5)]
        queued = {t.message_id: t.outbox for t in await police.runtime.list_sent()}
        assert queued == dict.fromkeys(sent, "queued")
    finally:
        await asyncio.to_thread(rabbitmqctl.run, ["start_app"])

    async def all_arrived() -> list[dict[str, Any]] | None:
        items = await _inbox(social)
        return items if len(items) == len(sent) else None

    await until(all_arrived, within_s=90, what="all five at social services")
    received = [r.message_id for r in await social.runtime.list_received()]
    assert sorted(received) == sorted(sent), "each exactly once"


async def test_the_same_idempotency_key_gives_the_same_message(area: Area) -> None:
    """A retried submission is one message; the key with another body is a conflict."""
    police = await area.start(POLICE)
    report = example("police-concern_report.json")
    key = f"polis-{secrets.token_hex(4)}"
    first = await police.call("POST", "/v1/messages", report, {"Idempotency-Key": key})
    second = await police.call("POST", "/v1/messages", report, {"Idempotency-Key": key})
    assert first[0] == second[0] == 202
    assert first[1]["message_id"] == second[1]["message_id"]
    report["iakttagelser"] = "Något annat."
    status, body = await police.call("POST", "/v1/messages", report, {"Idempotency-Key": key})
    assert (status, body["error"]) == (409, "idempotency_conflict")
    assert len(await police.runtime.list_sent()) == 1


async def test_bad_input_is_refused_field_by_field_and_nothing_is_sent(area: Area) -> None:
    """422 names each bad field (never the submitted number); the outbox stays empty."""
    school = await area.start(SCHOOL)
    referral = example("canonical-referral.json")
    referral["content"]["child"]["identity_number"] = "20121212-1213"  # a Luhn error
    referral["recipients"] = ["no-such-agency"]
    status, body = await school.call("POST", "/v1/messages", referral)
    assert status == 422, body
    assert "20121212" not in str(body)
    assert "1213" not in str(body)
    fields = str(body)
    assert "identity_number" in fields
    referral = example("canonical-referral.json")
    referral["recipients"] = ["no-such-agency"]
    status, body = await school.call("POST", "/v1/messages", referral)
    assert status == 422
    assert "recipients.0" in str(body), body
    status, body = await school.call("POST", "/v1/messages", None)
    assert status == 422
    assert await school.runtime.list_sent() == []


async def test_the_api_needs_the_agency_systems_token(area: Area) -> None:
    """Without the configured bearer token every /v1 route is 401; /healthz is open."""
    school = await area.start(SCHOOL)
    response = await school.client.get("/v1/inbox", headers={"Authorization": "Bearer nope"})
    assert response.status == 401
    response = await school.client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["rabbitmq"] == "connected"


async def test_the_stodsamordnare_accepts_a_team_invitation_in_the_web_inbox(
    area: Area, browser: BrowserContext
) -> None:
    """In Chromium: the barnkontakt's invitation is opened and accepted; the sender sees both."""
    vardcentral, social = await area.start(VARDCENTRAL), await area.start(SOCIAL)
    await _register_alva(area, SOCIAL)
    invitation = example("canonical-team_invitation.json")
    invitation["recipients"] = [SOCIAL.agency]
    message_id = await vardcentral.submit(invitation)
    await until(lambda: _inbox(social), what="the invitation at social services")

    page = await browser.new_page()
    base = str(social.client.make_url("/inbox/"))
    await page.goto(base)
    await page.get_by_label("Användar-id").fill("stodsamordnare.eva")
    await page.get_by_label("Lösenord").fill(STAFF_PASSWORD)
    await page.get_by_role("button", name="Logga in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Inkorg")
    await page.get_by_role("link", name=re.compile(r"^Inbjudan till Barnets team")).click()
    await expect(page.get_by_text("Torsviks skola, elevhälsans rum (plan 2)")).to_be_visible()
    await page.get_by_role("radio", name="Acceptera").check()
    await page.get_by_role("button", name="Skicka svar").click()
    await expect(page.get_by_role("status")).to_contain_text("Ditt svar är skickat")

    async def answered() -> list[tuple[str, str, str | None]] | None:
        events = await vardcentral.timeline(message_id)
        return events if ("answered", SOCIAL.agency, "accepted") in events else None

    events = await until(answered, what="the answer at the barnkontakt's adapter")
    read = [e for e in events if e[0] == "read"]
    assert read == [("read", SOCIAL.agency, None)]
    detail = await vardcentral.runtime.timeline(message_id)
    assert {e.staff_id for e in detail.events if e.status.value in ("read", "answered")} == {
        "stodsamordnare.eva"
    }


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        pytest.param("wrong-key", "envelope_invalid", id="sealed-to-a-key-the-recipient-does-not-hold"),
        pytest.param("other-child", "consent_child_mismatch", id="content-about-another-child"),
    ],
)  # fmt: skip
async def test_a_message_the_recipient_cannot_accept_is_refused_and_never_handed_over(
    area: Area, tamper: str, reason: str
) -> None:
    """The broker routes what it can verify; the recipient refuses what it cannot open or tie to its child."""
    social = await area.start(SOCIAL)
    content = example("canonical-concern_report.json")["content"]
    number = parse_identity_number(
        content["child"]["identity_number"], today=datetime.now(UTC).date()
    )
    content["child"]["identity_number"] = number.normalised
    key = SOCIAL.sealing
    if tamper == "wrong-key":
        key = SealingKey(agency=SOCIAL.agency, kid=SOCIAL.kid, public_key=BUP.hpke.public_key)
    now = datetime.now(UTC)
    sealed = seal(
        json.dumps(content).encode(),
        sender=POLICE.sender,
        recipients=[key],
        kind=Kind.CONCERN_REPORT,
        child=pseudonym_of("20150707-2385" if tamper == "other-child" else number.normalised),
        basis=LegalBasis(type="legal", ref="osl-10-28"),
        purpose=Purpose.CONCERN,
        created=now,
        expires=now + timedelta(days=7),
    )
    await area.publish_as(POLICE, sealed.wire, sealed.header.id)

    async def refused() -> bool:
        events = await area.store.timeline(sealed.header.id)
        return any(
            (e.agency, e.status, e.reason) == (SOCIAL.agency, "rejected", reason) for e in events
        )

    await until(refused, what=f"the recipient's rejected receipt ({reason}) at the broker")
    row = await social.runtime.store.received(sealed.header.id)
    assert row is not None
    assert (row.state, row.reason, row.content) == ("rejected", reason, None)
    assert await _inbox(social) == []


async def test_the_webhook_is_retried_until_the_agency_system_takes_the_message(
    area: Area,
) -> None:
    """The agency system answers 503 twice: the adapter retries; handed_over follows the 2xx only."""
    answers = [503, 503, 200]
    calls: list[str] = []

    async def agency_system(request: web.Request) -> web.Response:
        calls.append(request.headers["Idempotency-Key"])
        return web.json_response({}, status=answers[min(len(calls), len(answers)) - 1])

    app = web.Application()
    app.router.add_post("/hook", agency_system)
    async with serve(app) as base_url:
        police = await area.start(POLICE)
        social = await area.start(SOCIAL, handover="webhook", webhook_url=f"{base_url}/hook")
        message_id = await police.submit(example("police-concern_report.json"))

        async def handed_over() -> bool:
            return ("handed_over", SOCIAL.agency, None) in await police.timeline(message_id)

        await until(handed_over, what="the handed_over receipt after the retries")
    assert calls == [message_id] * 3
    assert (await social.runtime.store.received(message_id)).handover_attempts == 2  # type: ignore[union-attr]


async def test_a_backlog_is_handed_over_several_at_a_time_each_once(area: Area) -> None:
    """Eight reports queued while social services was away: webhooks overlap, none twice."""
    in_flight = 0
    most = 0
    calls: list[str] = []

    async def agency_system(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        calls.append(request.headers["Idempotency-Key"])
        await asyncio.sleep(0.2)
        in_flight -= 1
        return web.json_response({}, status=200)

    app = web.Application()
    app.router.add_post("/hook", agency_system)
    async with serve(app) as base_url:
        police = await area.start(POLICE)
        sent = [await police.submit(example("police-concern_report.json")) for _ in range(8)]
        social = await area.start(SOCIAL, handover="webhook", webhook_url=f"{base_url}/hook")

        async def all_handed_over() -> bool:
            for message_id in sent:
                if ("handed_over", SOCIAL.agency, None) not in await police.timeline(message_id):
                    return False
            return True

        await until(all_handed_over, what="every handed_over receipt")
    assert sorted(calls) == sorted(sent), "each handed over exactly once"
    assert most > 1, "independent threads are handed over side by side"
    for message_id in sent:
        row = await social.runtime.store.received(message_id)
        assert row is not None
        assert row.handover_attempts == 0, "none failed and was retried"


async def test_the_outbox_survives_a_restart_of_the_adapter(area: Area) -> None:
    """Submitted while RabbitMQ refuses the adapter, stopped, started again: the message goes."""
    social = await area.start(SOCIAL)
    police = await area.start(POLICE)
    await area.stop(POLICE)
    blocked = await area.start(POLICE, connect=False)  # RabbitMQ not reachable for it
    message_id = await blocked.submit(example("police-concern_report.json"))
    assert [t.outbox for t in await blocked.runtime.list_sent()] == ["queued"]
    await area.stop(POLICE)
    police = await area.start(POLICE)
    await until(partial(_inbox, social), what="the message after the restart")
    assert [t.outbox for t in await police.runtime.list_sent()] == ["sent"]
    assert message_id in str(await _inbox(social))

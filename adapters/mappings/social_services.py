"""The social services form: the canonical JSON form in, case-shaped JSON out.

Social services send in the canonical JSON form (the stödsamordnare's team
invitations, team responses and plan updates; referrals to health care;
concern reports to the police). What they receive is rendered for a case
system: a concern report (orosanmälan) or a referral (remiss) opens a case, so
it comes as a flat Swedish document with ``arende_typ``, ``inkom``, ``barn``,
``anmalare`` (or ``kontakt``), ``akut_fara`` and the rest of the shared Swedish
vocabulary. Team invitations, team responses, plan updates and escalation
notices are the stödsamordnare's coordination, not cases, and come in the
canonical rendering, the same form they are sent in. Timelines and the
``422`` body are the canonical ones. Documented in
docs/adapters/social_services.md.

Must never: do I/O, log, or put a submitted value into a problem.
"""

from __future__ import annotations

from typing import Any, Final

from adapters.canonical import Received
from adapters.mappings.canonical_json import CanonicalJsonMapping
from adapters.mappings.json_forms_common import (
    content_json,
    from_canonical,
    swedish_content,
    swedish_received_header,
)
from schemas.envelope import Kind

__all__ = ["SOCIAL_SERVICES_JSON", "SocialServicesJsonMapping"]

#: The kinds that open a case, and the content field naming the sender's person.
_CASE_KINDS: Final = {Kind.CONCERN_REPORT: "anmalare", Kind.REFERRAL: "kontakt"}


class SocialServicesJsonMapping(CanonicalJsonMapping):
    """Canonical JSON in, case-shaped JSON out (docs/adapters/social_services.md)."""

    name: str = "social_services"

    def render_received(self, item: Received) -> dict[str, Any]:
        """A concern report or referral as a case system takes it in; anything else canonically."""
        person_key = _CASE_KINDS.get(item.kind)
        if person_key is None:
            return super().render_received(item)
        case = from_canonical(
            swedish_content(item.kind, child_key="barn"), {"content": content_json(item.content)}
        )
        # The case records who reported as one party: agency and person together.
        case[person_key] = {"myndighet": item.sender, **case[person_key]}
        return {**swedish_received_header(item, kind_key="arende_typ"), **case}


#: The social services form.
SOCIAL_SERVICES_JSON: Final = SocialServicesJsonMapping()

"""The police form: an orosanmälan to social services, as one flat JSON document.

::

    {"anmalan_id": "5000-K123456-26", "mottagare": ["lidingo-socialtjanst"],
     "lagrum": "osl-10-28",                    # optional, this is the default
     "barn": {"personnummer": "…", "fornamn": "…", "efternamn": "…"},
     "iakttagelser": "…", "omraden": ["trygghet"], "akut_fara": false,
     "anmalare": {"personal_id": "…", "roll": "…"},
     "vardnadshavare_informerade": false, "barnet_informerat": true}

The police send concern reports only, always on a legal basis (OSL 10 kap.
28 §: the duty to report needs no consent), for the purpose ``concern``; any
other kind is refused. A body with a ``kind`` key is taken as the canonical
form, held to the same one kind. The police receive receipts, answers and
the odd concern report from other agencies; those, timelines and the ``422``
body are the canonical renderings. Documented in docs/adapters/police.md.

Must never: do I/O, log, or put a submitted value into a problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any, Final

from adapters.canonical import FieldProblem, InvalidSubmission, Submission
from adapters.mappings.canonical_json import CANONICAL_JSON, CanonicalJsonMapping, parse_canonical
from adapters.mappings.json_forms_common import (
    FormField,
    FormPaths,
    FormSpec,
    Problems,
    format_loc,
    from_canonical,
    swedish_content,
    to_canonical,
)
from schemas.envelope import Kind, LegalBasis, Purpose

__all__ = ["CONCERN_REPORT_BASIS", "POLICE_JSON", "PoliceJsonMapping"]

#: The legal basis of a concern report when the form names none: the code of
#: rule ``osl-10-28.concern-report`` in deploy/policy/sweden.toml (OSL 10 kap.
#: 28 § första stycket; SoL 14 kap. 1 §). A mapping reads no files, so the
#: code is repeated here; a policy without it refuses the message, never this.
CONCERN_REPORT_BASIS: Final = "osl-10-28"

#: The police's own reference for a report (a diarienummer, say).
REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,63}")

_KINDS: Final = (Kind.CONCERN_REPORT,)

#: The police form's fields and their places in the canonical submission (also read by
#: ``adapters.openapi`` for the agency API's schema).
SPEC: FormSpec = {
    "typ": FormField(("kind",), values={"orosanmalan": Kind.CONCERN_REPORT.value}),
    "mottagare": FormField(("recipients",)),
    "lagrum": FormField(("basis", "ref")),
    "giltig_till": FormField(("expires",)),
    **swedish_content(Kind.CONCERN_REPORT, child_key="barn"),
}


class PoliceJsonMapping(CanonicalJsonMapping):
    """The police's concern report form (docs/adapters/police.md)."""

    name: str = "police"

    def parse(self, body: object, *, today: date) -> Submission:
        """The concern report in a police form, or in the canonical form if it has ``kind``."""
        if isinstance(body, Mapping) and "kind" in body:
            return parse_canonical(body, today=today, kinds=_KINDS)
        if not isinstance(body, Mapping):
            raise InvalidSubmission([FieldProblem(format_loc(()), "must be a JSON object")])
        problems = Problems()
        document = dict(body)
        reference = document.pop("anmalan_id", None)
        if reference is not None and not (
            isinstance(reference, str) and REFERENCE.fullmatch(reference)
        ):
            problems.add_named(
                FieldProblem(
                    "anmalan_id",
                    "must be 1 to 64 letters, digits or . _ / : - (from a letter or digit)",
                )
            )
        canonical = to_canonical(SPEC, document, problems)
        # Whatever typ said (a wrong one is already a problem), the content is a
        # concern report and is checked as one, so that every problem shows at once.
        canonical["kind"] = Kind.CONCERN_REPORT.value
        basis = canonical.setdefault("basis", {})
        basis["type"] = "legal"
        if basis.get("ref") is None:
            basis["ref"] = CONCERN_REPORT_BASIS
        # A reporter must never be held up by having to classify a concern first.
        canonical.setdefault("content", {}).setdefault("need_areas", [])
        return parse_canonical(
            canonical, today=today, kinds=_KINDS, paths=FormPaths(SPEC), problems=problems
        )

    def render_submission(self, submission: Submission) -> dict[str, Any]:
        """The police form that submits ``submission`` (docs examples, tests).

        Only a concern report on a legal basis for the purpose ``concern`` has one.
        """
        if (
            submission.kind is not Kind.CONCERN_REPORT
            or not isinstance(submission.basis, LegalBasis)
            or submission.purpose is not Purpose.CONCERN
        ):
            raise ValueError("the police form holds concern reports on a legal basis only")
        return from_canonical(SPEC, CANONICAL_JSON.render_submission(submission))


#: The police form.
POLICE_JSON: Final = PoliceJsonMapping()

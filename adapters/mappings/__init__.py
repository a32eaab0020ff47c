"""One mapping per agency type: the agency's own format ⇄ the canonical submission.

Every mapping is pure (``adapters.canonical.Mapping``). An adapter uses the
mapping of its agency's type unless its config names another; every mapping
also takes the canonical JSON form (a body with a ``kind`` key).
"""

from __future__ import annotations

from adapters.canonical import Mapping
from schemas.directory import AgencyType

__all__ = ["MAPPING_NAMES", "mapping_for"]

#: The default mapping name of each agency type.
DEFAULT_MAPPING: dict[AgencyType, str] = {
    AgencyType.PRESCHOOL: "school",
    AgencyType.SCHOOL: "school",
    AgencyType.SOCIAL_SERVICES: "social_services",
    AgencyType.CHILD_HEALTH: "fhir",
    AgencyType.MATERNAL_CARE: "fhir",
    AgencyType.YOUTH_CLINIC: "fhir",
    AgencyType.PRIMARY_CARE: "fhir",
    AgencyType.BUP: "fhir",
    AgencyType.HABILITATION: "fhir",
    AgencyType.POLICE: "police",
}

MAPPING_NAMES: tuple[str, ...] = ("canonical", "school", "social_services", "fhir", "police")


def mapping_for(
    agency_type: AgencyType, name: str | None = None, *, agency: str | None = None
) -> Mapping:
    """The mapping called ``name``, or the default one for ``agency_type``, for ``agency``."""
    chosen = name or DEFAULT_MAPPING.get(agency_type)
    # Imported here: the FHIR models are large, and an adapter loads only its own.
    if chosen == "canonical":
        from adapters.mappings.canonical_json import CANONICAL_JSON  # noqa: PLC0415

        return CANONICAL_JSON
    if chosen == "school":
        from adapters.mappings.school import SCHOOL_FORM  # noqa: PLC0415

        return SCHOOL_FORM
    if chosen == "social_services":
        from adapters.mappings.social_services import SOCIAL_SERVICES_JSON  # noqa: PLC0415

        return SOCIAL_SERVICES_JSON
    if chosen == "fhir":
        from adapters.mappings.fhir import FhirMapping  # noqa: PLC0415

        # Knows its own agency: a received referral names it as performer and Task owner.
        return FhirMapping(agency=agency)
    if chosen == "police":
        from adapters.mappings.police import POLICE_JSON  # noqa: PLC0415

        return POLICE_JSON
    raise ValueError(f"no mapping {chosen!r}; choose one of {', '.join(MAPPING_NAMES)}")

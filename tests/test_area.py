"""Area descriptions: the demo area parses, and every mistake names its file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from keys.area import AreaConfig, load_area, parse_area
from keys.errors import AreaConfigError
from schemas.directory import AgencyType

DEMO = Path(__file__).resolve().parent.parent / "deploy" / "areas" / "demo.toml"

MINIMAL = """\
[area]
id = "test-area"
name = "Test area"

[[agency]]
id = "skolan"
name = "Skolan"
type = "school"
municipality = "Teststad"

[[agency]]
id = "soc"
name = "Socialtjänsten"
type = "social_services"
municipality = "Teststad"

[[agency]]
id = "bvc"
name = "BVC"
type = "child_health"
municipality = "Teststad"

[[officer]]
id = "officer-1"
name = "Säkerhet"
role = "security_officer"
"""


def _error(text: str) -> str:
    with pytest.raises(AreaConfigError) as caught:
        parse_area(text, source="deploy/areas/x.toml")
    return str(caught.value)


def test_demo_area_parses_with_every_agency_of_the_lidingo_model() -> None:
    """The demo area has the school, social services, BVC, BUP, police and a preschool."""
    config = load_area(DEMO)
    assert config.area.id == "lidingo-demo"
    types = {a.type for a in config.agency}
    assert types == {
        AgencyType.SCHOOL,
        AgencyType.SOCIAL_SERVICES,
        AgencyType.PRIMARY_CARE,
        AgencyType.BUP,
        AgencyType.POLICE,
        AgencyType.PRESCHOOL,
    }
    social = next(a for a in config.agency if a.type is AgencyType.SOCIAL_SERVICES)
    assert "stödsamordnare" in social.roles
    assert [o.role for o in config.officer] == ["security_officer"]
    assert config.agencies == config.agency
    assert config.officers == config.officer


def test_defaults_fill_in_rotation_validity_and_broker_address() -> None:
    """Omitted [area] settings get the documented defaults."""
    area = parse_area(MINIMAL).area
    assert area.rotation_overlap_days == 30
    assert area.key_validity_days == 730
    assert area.broker_hostnames == ["localhost"]
    assert area.broker_ips == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            'type = "child_health"',
            'type = "schol"',
            "deploy/areas/x.toml: agency[2].type: 'schol' is not one of preschool, school,",
            id="misspelt-type",
        ),
        pytest.param(
            'type = "child_health"',
            'type = "broker"',
            "agency[2].type: 'broker' is not one of",
            id="broker-is-no-agency-type",
        ),
        pytest.param(
            'id = "soc"',
            'id = "broker"',
            "agency[1].id: 'broker' is reserved",
            id="reserved-id",
        ),
        pytest.param(
            'name = "Test area"',
            'name = "Test area"\ncolour = "blue"',
            "area.colour: unknown key",
            id="unknown-key-in-area",
        ),
        pytest.param(
            'municipality = "Teststad"\n\n[[agency]]\nid = "soc"',
            'municipality = "Teststad"\nphone = "1"\n\n[[agency]]\nid = "soc"',
            "agency[0].phone: unknown key",
            id="unknown-key-in-agency",
        ),
        pytest.param(
            'name = "Test area"',
            'name = "Test area"\nrotation_overlap_days = "30"',
            "area.rotation_overlap_days: Input should be a valid integer (got '30')",
            id="string-for-number",
        ),
        pytest.param(
            'role = "security_officer"',
            'role = "admin"',
            "officer[0].role:",
            id="unknown-officer-role",
        ),
        pytest.param(
            'name = "Test area"',
            'name = "Test area"\nbroker_ips = ["localhost"]',
            "area.broker_ips: 'localhost' is not an IP address",
            id="bad-ip",
        ),
        pytest.param(
            'name = "Test area"\n',
            "",
            "area.name: required key is missing",
            id="missing-name",
        ),
        pytest.param(
            'id = "bvc"',
            'id = "Bvc Mottagning"',
            "agency[2].id: String should match pattern",
            id="bad-agency-id",
        ),
    ],
)
def test_errors_name_the_file_and_the_field(old: str, new: str, expected: str) -> None:
    """Each mistake is reported with the file and the dotted field path."""
    assert old in MINIMAL
    message = _error(MINIMAL.replace(old, new, 1))
    assert message.startswith("deploy/areas/x.toml: ")
    assert expected in message


def test_duplicate_agency_ids_are_refused() -> None:
    """Two agencies with one id are refused, naming both positions."""
    message = _error(MINIMAL.replace('id = "bvc"', 'id = "skolan"'))
    assert "agency[2].id: duplicate id 'skolan' (already used by agency[0])" in message


def test_duplicate_officer_ids_are_refused() -> None:
    """Two officers with one id are refused."""
    extra = '\n[[officer]]\nid = "officer-1"\nname = "Drift"\nrole = "operator"\n'
    assert "officer[1].id: duplicate id 'officer-1'" in _error(MINIMAL + extra)


def test_an_area_without_agencies_is_refused() -> None:
    """An area needs at least one agency."""
    assert "agency: required key is missing" in _error('[area]\nid = "aa"\nname = "A"\n')


def test_invalid_toml_is_an_area_config_error() -> None:
    """A TOML syntax error is reported with the file name, not as a TOMLDecodeError."""
    assert _error("[area\n").startswith("deploy/areas/x.toml: not valid TOML")


def test_a_missing_file_is_an_area_config_error(tmp_path: Path) -> None:
    """A file that cannot be read is an AreaConfigError naming it."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(AreaConfigError, match=r"nope\.toml: cannot read"):
        load_area(missing)


def test_to_toml_returns_the_source_text_verbatim() -> None:
    """A loaded area renders as the exact text it came from, comments included."""
    text = DEMO.read_text(encoding="utf-8")
    assert load_area(DEMO).to_toml() == text


def test_an_area_built_in_code_renders_as_toml_that_parses_back() -> None:
    """to_toml of a config without source text parses to the same config."""
    built = AreaConfig.model_validate(load_area(DEMO).model_dump())
    assert parse_area(built.to_toml()).model_dump() == built.model_dump()

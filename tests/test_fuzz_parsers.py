"""Hypothesis fuzzing of what parses untrusted input: the envelope and every adapter mapping.

* ``keys.envelope``: arbitrary bytes, and valid envelopes mutated at the byte,
  the JSON and the signed-header level, go through ``parse_envelope``,
  ``verify`` and ``open_envelope``. The only exception any of them may raise
  is ``InvalidEnvelope`` (docs/PROTOCOL.md §4.5: one opaque error).
* ``adapters.mappings``: every mapping an agency type can have gets arbitrary
  JSON values and the documented example submissions mutated (values replaced
  or deleted, keys added, the child's personnummer moved about). Each answer
  is a ``Submission`` or an ``InvalidSubmission`` whose problems never repeat
  the personnummer and which the mapping renders as its 422 body; nothing
  else is raised.

``BACKA_FUZZ_EXAMPLES`` sets the examples per property (default 200, a few
seconds each here); a long run sets a larger number.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from adapters.canonical import InvalidSubmission, Mapping, Submission
from adapters.mappings import DEFAULT_MAPPING, MAPPING_NAMES, mapping_for
from keys.envelope import Sealed, open_envelope, parse_envelope, seal, signature_input, verify
from keys.errors import InvalidEnvelope
from schemas.common import b64url_decode, b64url_encode
from schemas.directory import AgencyType
from schemas.envelope import Kind, LegalBasis, Purpose
from tests.support import CHILD, EXPIRES, T0, Agency, MemoryDirectory

EXAMPLES = int(os.environ.get("BACKA_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # two shared cores: no timing
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Any JSON value ``json.loads`` can return, NaN and the infinities included.
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=16,
)


# --- the envelope -------------------------------------------------------------------------------

SENDER = Agency.make("fuzz-skola")
RECIPIENT = Agency.make("fuzz-soc")
DIRECTORY = MemoryDirectory.of(SENDER, RECIPIENT)
SEALED: Sealed = seal(
    b'{"summary": "fuzz"}',
    sender=SENDER.sender,
    recipients=[RECIPIENT.sealing],
    kind=Kind.REFERRAL,
    child=CHILD,
    basis=LegalBasis(type="legal", ref="osl-10-28"),
    purpose=Purpose.REFERRAL,
    created=T0,
    expires=EXPIRES,
)
WIRE = json.loads(SEALED.wire)
HEADER = json.loads(b64url_decode(SEALED.envelope.protected))


#: What parsing, verifying and opening may end in; any other exception fails the test.
ENDS: Final = frozenset({"refused", "opened"})


def _every_step(wire: bytes) -> str:
    """Parse, verify and open ``wire``: "refused" or "opened"; anything but InvalidEnvelope escapes.

    How far each example got is a Hypothesis event (``--hypothesis-show-statistics``).
    """
    try:
        parse_envelope(wire)
        verify(wire, keys=DIRECTORY, now=T0)
        open_envelope(wire, keys=DIRECTORY, recipient=RECIPIENT.recipient, now=T0)
    except InvalidEnvelope as exc:
        event(f"refused: {exc.detail}")
        return "refused"
    event("opened")
    return "opened"


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        yield from _paths(child, (*prefix, key))


KEYS = st.text(max_size=12)


@st.composite
def _mutated(
    draw: st.DrawFn,
    original: Any,
    values: st.SearchStrategy[Any] = JSON,
    keys: st.SearchStrategy[str] = KEYS,
) -> Any:
    """``original`` with one to four values replaced or deleted, or keys added."""
    document = copy.deepcopy(original)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(list(_paths(document))))
        if not path:
            return draw(values)
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent.append(draw(values))
    return document


def _resigned(header: Any) -> bytes:
    """The valid envelope with ``header`` as its protected header, re-signed by its sender."""
    protected = json.dumps(header).encode()
    ciphertext = b64url_decode(SEALED.envelope.ciphertext)
    signature = SENDER.signing.sign(signature_input(protected, ciphertext))
    return json.dumps(
        {**WIRE, "protected": b64url_encode(protected), "signature": b64url_encode(signature)}
    ).encode()


@FUZZ
@given(wire=st.binary(max_size=2048))
@example(wire=b"")
@example(wire=b"[" * 100_000)
@example(wire=b'{"protected": "\xff"}')
def test_arbitrary_bytes_are_at_most_an_invalid_envelope(wire: bytes) -> None:
    """Any bytes: parse, verify and open raise InvalidEnvelope (no bytes forge a signature)."""
    assert _every_step(wire) == "refused"


@FUZZ
@given(wire=st.binary(min_size=1, max_size=64), at=st.integers(min_value=0), cut=st.booleans())
def test_a_valid_envelope_with_bytes_spliced_in_is_at_most_invalid(
    wire: bytes, at: int, cut: bool
) -> None:
    """Bytes written over (or a cut at) any point of a valid envelope: InvalidEnvelope or nothing."""
    index = at % len(SEALED.wire)
    spliced = SEALED.wire[:index] + (b"" if cut else wire + SEALED.wire[index + len(wire) :])
    assert _every_step(spliced) in ENDS


@FUZZ
@given(envelope=_mutated(WIRE))
def test_a_valid_envelope_with_its_json_mutated_is_at_most_invalid(envelope: Any) -> None:
    """Members of the envelope object replaced, deleted or added: InvalidEnvelope or nothing."""
    assert _every_step(json.dumps(envelope).encode()) in ENDS


#: Values that reach the crypto once the header is re-signed: base64url of any length.
_B64 = st.binary(max_size=1300).map(b64url_encode)


@FUZZ
@given(header=_mutated(HEADER, JSON | _B64))
@example(header={**HEADER, "iv": b64url_encode(b"\x00" * 7)})
@example(header={**HEADER, "recipients": [{**HEADER["recipients"][0], "wrapped_key": "AAAA"}]})
def test_a_resigned_mutated_header_is_at_most_invalid(header: Any) -> None:
    """A header mutated and validly signed again (so its fields reach the crypto): InvalidEnvelope."""
    assert _every_step(_resigned(header)) in ENDS


@FUZZ
@given(iv=st.none() | _B64, wrapped_key=st.none() | _B64)
def test_any_nonce_or_wrapped_key_under_a_valid_signature_is_at_most_invalid(
    iv: str | None, wrapped_key: str | None
) -> None:
    """Key material of any length, validly signed, reaches HPKE and AES-GCM: InvalidEnvelope."""
    recipient = HEADER["recipients"][0]
    header = {
        **HEADER,
        "iv": HEADER["iv"] if iv is None else iv,
        "recipients": [{**recipient, "wrapped_key": wrapped_key or recipient["wrapped_key"]}],
    }
    assert _every_step(_resigned(header)) in ENDS


# --- the adapter mappings -----------------------------------------------------------------------

TODAY = date(2026, 11, 25)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "adapters" / "examples"
#: Every mapping an agency type gets by default, by name, and the canonical one all of them take.
MAPPINGS: dict[str, Mapping] = {
    name: mapping_for(kind, agency="fuzz-agency") for kind, name in DEFAULT_MAPPING.items()
} | {"canonical": mapping_for(AgencyType.SCHOOL, "canonical")}
#: The prefix of each mapping's own example files; every mapping also takes the canonical ones.
OWN_EXAMPLES = {
    "canonical": "canonical-",
    "school": "school-",
    "social_services": "social_services-",
    "police": "police-",
    "fhir": "health-",
}
#: A personnummer or samordningsnummer in any written form (as keys.ca looks for one).
PERSONNUMMER = re.compile(r"\d{6}(?:\d{2})?[-+]?\d{4}")
#: Keys and values that put a personnummer where a problem might repeat it.
NUMBERS = st.sampled_from(["121212-1212", "201212121212", "20121212+1212", "1212121212"])


def _examples(mapping: str) -> list[Any]:
    prefixes = ("canonical-", OWN_EXAMPLES[mapping])
    files = sorted(p for p in DOCS.glob("*.json") if p.name.startswith(prefixes))
    assert files, f"no examples for {mapping}"
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def test_the_fuzzed_mappings_are_every_mapping() -> None:
    """Every agency type's default mapping, and every mapping there is, is fuzzed below."""
    assert set(MAPPINGS) == set(MAPPING_NAMES) == set(OWN_EXAMPLES)


def _parse(mapping: Mapping, body: object) -> str:
    """Parse ``body``: "submission", or "refused" with an InvalidSubmission safe to send back."""
    try:
        submission = mapping.parse(body, today=TODAY)
    except InvalidSubmission as exc:
        rendered = json.dumps(mapping.render_problems(list(exc.problems)))
        assert not PERSONNUMMER.search(rendered), f"a problem repeats a personnummer: {rendered}"
        return "refused"
    assert isinstance(submission, Submission)
    return "submission"


@pytest.mark.parametrize("name", sorted(MAPPINGS))
@FUZZ
@given(data=st.data())
def test_a_mapping_takes_any_json_value(name: str, data: st.DataObject) -> None:
    """Any JSON value: a Submission or an InvalidSubmission, nothing else."""
    assert _parse(MAPPINGS[name], data.draw(JSON | NUMBERS)) in {"submission", "refused"}


@pytest.mark.parametrize("name", sorted(MAPPINGS))
@FUZZ
@given(data=st.data())
def test_a_mapping_takes_any_mutated_example(name: str, data: st.DataObject) -> None:
    """A documented example mutated: a Submission or an InvalidSubmission without a number."""
    original = data.draw(st.sampled_from(_examples(name)))
    mutated = data.draw(_mutated(original, JSON | NUMBERS, keys=KEYS | NUMBERS))
    assert _parse(MAPPINGS[name], mutated) in {"submission", "refused"}

"""Export the wire contract as JSON Schema files for integrators.

An agency system in Java or .NET implements the contract from these files, so
they are generated from the pydantic models (the one source of truth) and
committed; ``--check`` fails CI when the committed files and the models drift
apart. The output is deterministic: the same models always give the same bytes.

Usage::

    python -m schemas.export            # write schemas/json/*.schema.json
    python -m schemas.export --check    # write nothing; exit 1 if out of date
    python -m schemas.export --out DIR  # write (or check) another directory
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from schemas.audit import AuditEntry
from schemas.consent import ConsentRecord, ConsentRevocation, SignedConsent, SignedRevocation
from schemas.content import (
    ConcernReport,
    EscalationNotice,
    PlanUpdate,
    Referral,
    TeamInvitation,
    TeamResponse,
)
from schemas.directory import DirectoryBundle, DirectoryEntry, SignedDirectoryEntry
from schemas.envelope import Envelope, ProtectedHeader
from schemas.receipts import Receipt, SignedReceipt

#: Every wire model by the base name of its schema file.
MODELS: dict[str, type[BaseModel]] = {
    "audit_entry": AuditEntry,
    "concern_report": ConcernReport,
    "consent_record": ConsentRecord,
    "consent_revocation": ConsentRevocation,
    "directory_bundle": DirectoryBundle,
    "directory_entry": DirectoryEntry,
    "envelope": Envelope,
    "escalation_notice": EscalationNotice,
    "plan_update": PlanUpdate,
    "protected_header": ProtectedHeader,
    "receipt": Receipt,
    "referral": Referral,
    "signed_consent": SignedConsent,
    "signed_directory_entry": SignedDirectoryEntry,
    "signed_receipt": SignedReceipt,
    "signed_revocation": SignedRevocation,
    "team_invitation": TeamInvitation,
    "team_response": TeamResponse,
}

#: Where the committed schema files live.
DEFAULT_OUT_DIR = Path(__file__).parent / "json"

_SUFFIX = ".schema.json"
_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_FIX_COMMAND = "python -m schemas.export"


def render_all() -> dict[str, str]:
    """Render every model's JSON Schema, keyed by file name, as the exact file text."""
    rendered: dict[str, str] = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(mode="validation")
        # Name the dialect so that validators in other languages need no guessing.
        schema = {"$schema": _JSON_SCHEMA_DIALECT, **schema}
        text = json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False)
        rendered[name + _SUFFIX] = text + "\n"
    return rendered


def _stale(out_dir: Path, rendered: dict[str, str]) -> list[str]:
    """File names in ``out_dir`` that are missing, differ, or are no longer generated."""
    present = {path.name for path in out_dir.glob("*" + _SUFFIX)} if out_dir.is_dir() else set()
    problems = [
        name
        for name, text in rendered.items()
        if name not in present or (out_dir / name).read_text(encoding="utf-8") != text
    ]
    problems.extend(name for name in present if name not in rendered)
    return sorted(problems)


def _write(out_dir: Path, rendered: dict[str, str]) -> list[str]:
    """Bring ``out_dir`` up to date; return the names written or deleted."""
    changed = _stale(out_dir, rendered)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in changed:
        path = out_dir / name
        if name in rendered:
            # newline="" keeps "\n" on every platform: the check compares bytes.
            path.write_text(rendered[name], encoding="utf-8", newline="")
        else:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Write or check the JSON Schema files; return the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any file is missing, different or stale",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="directory of the schema files (default: schemas/json)",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    rendered = render_all()

    if args.check:
        stale = _stale(out_dir, rendered)
        if not stale:
            return 0
        fix = _FIX_COMMAND if out_dir == DEFAULT_OUT_DIR else f"{_FIX_COMMAND} --out {out_dir}"
        lines = [f"JSON Schema out of date in {out_dir}:"]
        lines.extend(f"  {name}" for name in stale)
        lines.append(f"run: {fix}")
        sys.stderr.write("\n".join(lines) + "\n")
        return 1

    for name in _write(out_dir, rendered):
        sys.stdout.write(f"{'wrote' if name in rendered else 'deleted'} {out_dir / name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

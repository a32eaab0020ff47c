"""The committed JSON Schema files match the models, and ``--check`` catches drift."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.export import DEFAULT_OUT_DIR, MODELS, main, render_all

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    """A private copy of the committed schema directory that a test may spoil."""
    target = tmp_path / "json"
    shutil.copytree(DEFAULT_OUT_DIR, target)
    return target


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside a schema document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def test_committed_files_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    """The committed schemas/json matches the models (run the export if this fails)."""
    assert main(["--check"]) == 0, capsys.readouterr().err


def test_every_model_is_rendered_under_a_snake_case_name() -> None:
    """Each model in MODELS becomes one <snake_case>.schema.json file."""
    rendered = render_all()
    assert set(rendered) == {f"{name}.schema.json" for name in MODELS}
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in MODELS)


def test_rendering_is_deterministic_and_canonical() -> None:
    """Two renders are identical, and each is sorted, indented JSON ending in a newline."""
    first, second = render_all(), render_all()
    assert first == second
    for text in first.values():
        canonical = json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False)
        assert text == canonical + "\n"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_schema_closes_every_object(name: str) -> None:
    """Every object with properties refuses extra ones, as the models do."""
    schema = json.loads(render_all()[f"{name}.schema.json"])
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    objects = [node for node in _objects(schema) if "properties" in node]
    assert objects
    assert all(node.get("additionalProperties") is False for node in objects)


def test_check_fails_when_a_file_is_altered(
    schema_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An edited schema file fails the check, which names it and the fix, and changes nothing."""
    altered = schema_copy / "receipt.schema.json"
    altered.write_text(altered.read_text(encoding="utf-8").replace("rejected", "refused"))
    before = altered.read_bytes()
    assert main(["--check", "--out", str(schema_copy)]) == 1
    err = capsys.readouterr().err
    assert "receipt.schema.json" in err
    assert f"python -m schemas.export --out {schema_copy}" in err
    assert altered.read_bytes() == before


def test_check_fails_when_a_file_is_missing(
    schema_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A schema file that was never written fails the check, which names it."""
    (schema_copy / "referral.schema.json").unlink()
    assert main(["--check", "--out", str(schema_copy)]) == 1
    assert "referral.schema.json" in capsys.readouterr().err
    assert not (schema_copy / "referral.schema.json").exists()


def test_check_fails_on_a_stale_file(schema_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A schema file no model generates any more fails the check, which names it."""
    (schema_copy / "old_model.schema.json").write_text("{}\n", encoding="utf-8")
    assert main(["--check", "--out", str(schema_copy)]) == 1
    assert "old_model.schema.json" in capsys.readouterr().err


def test_check_names_every_problem(schema_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All stale, missing and altered files are named together, not just the first."""
    (schema_copy / "old_model.schema.json").write_text("{}\n", encoding="utf-8")
    (schema_copy / "referral.schema.json").unlink()
    (schema_copy / "envelope.schema.json").write_text("{}\n", encoding="utf-8")
    assert main(["--check", "--out", str(schema_copy)]) == 1
    err = capsys.readouterr().err
    for name in ("old_model", "referral", "envelope"):
        assert f"{name}.schema.json" in err


def test_write_repairs_the_directory(schema_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Writing restores altered and missing files, deletes stale ones and leaves others alone."""
    (schema_copy / "old_model.schema.json").write_text("{}\n", encoding="utf-8")
    (schema_copy / "referral.schema.json").unlink()
    (schema_copy / "envelope.schema.json").write_text("{}\n", encoding="utf-8")
    (schema_copy / "README.md").write_text("not a schema\n", encoding="utf-8")
    assert main(["--out", str(schema_copy)]) == 0
    out = capsys.readouterr().out
    assert "deleted" in out
    assert "old_model.schema.json" in out
    assert "receipt.schema.json" not in out
    assert main(["--check", "--out", str(schema_copy)]) == 0
    assert not (schema_copy / "old_model.schema.json").exists()
    assert (schema_copy / "README.md").exists()


def test_write_creates_a_missing_directory(tmp_path: Path) -> None:
    """Exporting into a directory that does not exist creates it with every file."""
    target = tmp_path / "new" / "json"
    assert main(["--out", str(target)]) == 0
    written = {path.name: path.read_bytes() for path in target.iterdir()}
    assert written == {name: text.encode() for name, text in render_all().items()}


def test_module_runs_as_a_command() -> None:
    """``python -m schemas.export --check`` runs and passes on the committed files."""
    result = subprocess.run(
        [sys.executable, "-m", "schemas.export", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

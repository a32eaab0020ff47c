"""The dependency rules of DESIGN.md, checked on the source: who may import whom.

``schemas`` ← ``keys`` ← ``broker``, ``adapters``; ``broker`` and ``adapters``
never import each other; pure modules import no I/O library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"schemas", "keys", "broker", "adapters", "backa", "tests", "bench"}
ALLOWED = {
    "schemas": {"schemas"},
    "keys": {"schemas", "keys"},
    "broker": {"schemas", "keys", "broker"},
    "adapters": {"schemas", "keys", "adapters"},
}
IO_LIBRARIES = {"aio_pika", "aiormq", "aiohttp", "sqlalchemy", "asyncpg", "aiosqlite", "socket"}
#: Modules that must stay pure: no network, database or socket library.
PURE = [
    "schemas",
    "keys/envelope.py",
    "keys/material.py",
    "keys/lookup.py",
    "keys/personnummer.py",
    "keys/pseudonym.py",
    "keys/replay.py",
    "keys/signed.py",
    "keys/directory.py",
    "keys/policy.py",
    "keys/group_commit.py",
    "schemas/policy.py",
    "broker/batching.py",
    "broker/topology.py",
    "broker/definitions.py",
    "broker/pipeline.py",
    "broker/policy.py",
    "broker/status.py",
    "broker/records.py",
    "broker/receipts.py",
    "broker/deadlines.py",
    "broker/audit/merkle.py",
    "broker/audit/note.py",
    "broker/audit/entry.py",
    "broker/audit/verify.py",
    "broker/audit/ports.py",
    "adapters/canonical.py",
    "adapters/core.py",
    "adapters/openapi.py",
    "adapters/mappings",
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _files(target: str) -> list[Path]:
    path = ROOT / target
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_they_may(package: str) -> None:
    """Each package imports only the project packages beneath it."""
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _files(package)
        for name in _imports(path) & PROJECT
        if name not in ALLOWED[package]
    }
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("target", PURE)
def test_pure_core_imports_no_io(target: str) -> None:
    """The pure core never imports an AMQP, HTTP, database or socket library."""
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _files(target)
        for name in _imports(path) & IO_LIBRARIES
    }
    assert not offenders, sorted(offenders)

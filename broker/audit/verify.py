"""Offline verification of an audit export against signed checkpoints (``backa audit verify``).

Reads the export line by line (docs/AUDIT.md) with memory O(log n): each
entry's canonical bytes are rebuilt from the JSON object and hashed, compared
with the tree's leaf the broker exported beside it, and folded into the
tree's right edge; at each checkpoint's size the root is compared with the
signed one. The first problem names its index: a line out of order or
missing, an entry that is not the one the tree holds at that index, or —
when entry and tree were both rewritten — the range between the last
checkpoint that held and the first that did not.

Pure: takes lines and already-opened checkpoints (``broker.audit.note``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker.audit import merkle
from keys.directory import canonical_json


@dataclass(frozen=True, slots=True)
class SignedSize:
    """What a verified checkpoint says: the tree of ``size`` entries has ``root``."""

    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome: ``first_bad`` is None when everything verified."""

    entries: int
    checked_sizes: tuple[int, ...]
    first_bad: int | None = None
    last_good: int | None = None  # with a root mismatch: the bad index is in [last_good, first_bad]
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True when every line and every checkpoint verified."""
        return self.problem is None


class Frontier:
    """The right edge of an RFC 9162 tree: one perfect subtree per set bit of the size."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []

    def append(self, leaf: bytes) -> None:
        level, digest = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            digest = merkle.node_hash(left, digest)
            level += 1
        self._stack.append((level, digest))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return merkle.EMPTY_ROOT
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            digest = merkle.node_hash(left, digest)
        return digest


def verify_export(  # noqa: PLR0911 - one return per kind of problem, named where it is found
    lines: Iterable[bytes | str], checkpoints: Sequence[SignedSize]
) -> Report:
    """Verify an export that starts at index 0 against the given checkpoints."""
    pending = sorted(checkpoints, key=lambda c: c.size)
    checked: list[int] = []
    frontier = Frontier()
    last_good = 0

    def check_roots() -> Report | None:
        nonlocal last_good
        while pending and pending[0].size == frontier.size:
            signed = pending.pop(0)
            if frontier.root() != signed.root:
                return Report(
                    entries=frontier.size,
                    checked_sizes=tuple(checked),
                    first_bad=signed.size - 1,
                    last_good=last_good,
                    problem=(
                        f"the entries do not give the root signed for size {signed.size}: "
                        f"an entry in [{last_good}, {signed.size - 1}] was changed"
                    ),
                )
            checked.append(signed.size)
            last_good = signed.size
        return None

    early = check_roots()  # a checkpoint of size 0
    if early is not None:
        return early
    for number, given in enumerate(lines):
        raw = given.encode() if isinstance(given, str) else given
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            index = line["index"]
            entry = line["entry"]
            data = canonical_json(entry)
        except (ValueError, KeyError, TypeError):
            return _bad(frontier.size, checked, f"line {number + 1} is not an export line")
        if index != frontier.size:
            return _bad(
                frontier.size,
                checked,
                f"expected index {frontier.size}, found {index}: "
                "an entry is missing or out of order",
            )
        leaf = merkle.leaf_hash(data)
        exported = line.get("leaf_hash")
        if exported is not None and exported != leaf.hex():
            return _bad(index, checked, f"entry {index} is not the entry the tree holds there")
        frontier.append(leaf)
        problem = check_roots()
        if problem is not None:
            return problem
    if pending:
        return _bad(
            frontier.size,
            checked,
            f"the export ends at {frontier.size} entries, before checkpoint size {pending[0].size}",
        )
    return Report(entries=frontier.size, checked_sizes=tuple(checked))


def _bad(index: int, checked: Sequence[int], problem: str) -> Report:
    return Report(entries=index, checked_sizes=tuple(checked), first_bad=index, problem=problem)

"""After the whole demo, the broker's store and every process's log hold no plaintext.

Reads what the session's one run of ``backa demo`` left (tests/demo_run.py:
a broker and five adapters as processes, all seven steps, on a RabbitMQ vhost
and a directory of their own), and searches for every *needle* taken from the demo's own data: the
personnummer in the examples it sends and ``CHILD_NUMBER``, each in every
written form (10 or 12 digits, with '-', '+' or nothing; also base64); the
names, case number, telephone and free text of those examples; the staff's
names. Each needle is searched as UTF-8, JSON-escaped (``\\u00e5``) and NFD,
case-folded, in the raw bytes and in the UTF-8 text they decode to. It must
occur in none of:

- the broker's SQLite store (``demo_dir/broker.db``): every column of every
  row of every table, text and bytes alike;
- every file under ``demo_dir`` outside ``adapters/``, whole and raw: the
  database file (and its -wal and -shm if left), the keys and directory, the
  logs;
- every line of every process's log (``demo_dir/logs/<name>.log``): the
  broker's and the five adapters'.

The adapters' own databases are not searched for leaks: an agency's adapter
holds its plaintext by design (OSL applies on the agency side). They are the
positive control instead: the same dump and search must find the child's
number and the examples' text there, and a needle planted in a copy of the
broker's store and in a log line must be found and named; and the store and
logs searched must be the demo's, with the rows and lines it makes.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import re
import shutil
import sqlite3
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import backa.demo
from backa.demo import AGENCIES, CHILD_NUMBER, STAFF, _example
from keys.errors import PersonnummerError
from keys.personnummer import parse_identity_number
from tests.demo_run import DemoRun

pytestmark = pytest.mark.rabbitmq

#: A name or text shorter than this is not searched: "Alva" or "Nora" occur by
#: chance in a few hundred kilobytes of base64 (their surnames and the texts
#: that name them are searched instead).
MIN_NEEDLE = 6
#: Long free text is also searched by its first and last this many characters:
#: SQLite splits a long value over overflow pages, and a log may truncate it.
SLICE = 24
#: What a leaf of an example is when it is routing, a code or a time, not content.
_CODE = re.compile(r"[a-zåäö0-9_.\-]+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Needle:
    """One form of one thing the broker must never hold: ``what`` names it, ``text`` is it."""

    what: str
    text: str

    @property
    def raw(self) -> bytes:
        """The needle as UTF-8 bytes, for the search of raw bytes."""
        return self.text.encode()

    @property
    def folded(self) -> str:
        """The needle case-folded, for the search of decoded text."""
        return self.text.casefold()


@dataclass(frozen=True)
class Cell:
    """One place searched: ``where`` names it (file, table, column, row or line), never its value."""

    where: str
    data: bytes


# --- the needles ------------------------------------------------------------------------------


def personnummer_needles(number: str, who: str) -> list[Needle]:
    """Every written form of ``number``: 10 or 12 digits, with '-', '+' or nothing; and base64."""
    normalised = parse_identity_number(number, today=datetime.now(UTC).date()).normalised
    forms: dict[str, str] = {}
    for digits, label in ((normalised[2:], "YYMMDD"), (normalised, "YYYYMMDD")):
        birth, serial = digits[:-4], digits[-4:]
        forms[f"{label}NNNN"] = birth + serial
        forms[f"{label}-NNNN"] = f"{birth}-{serial}"
        forms[f"{label}+NNNN"] = f"{birth}+{serial}"
    needles = [Needle(f"{who} as {form}", text) for form, text in forms.items()]
    for form, text in forms.items():
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(text.encode()).decode().rstrip("=")
            needles.append(Needle(f"{who} as {form} in {name}", encoded))
    return needles


def text_needles(text: str, what: str) -> list[Needle]:
    """``text`` as written, JSON-escaped and decomposed (NFD); long text also by its ends."""
    pieces = {what: text}
    if len(text) > 2 * SLICE:
        pieces[f"{what} (first {SLICE} characters)"] = text[:SLICE]
        pieces[f"{what} (last {SLICE} characters)"] = text[-SLICE:]
    needles = []
    for label, piece in pieces.items():
        needles.append(Needle(label, piece))
        escaped = json.dumps(piece)[1:-1]
        if escaped != piece:
            needles.append(Needle(f"{label}, JSON-escaped", escaped))
        decomposed = unicodedata.normalize("NFD", piece)
        if decomposed != piece:
            needles.append(Needle(f"{label}, NFD", decomposed))
    return needles


def sent_examples() -> list[str]:
    """The example files the demo sends, as its own source names them."""
    return sorted(set(re.findall(r'_example\(\s*"([^"]+)"', inspect.getsource(backa.demo))))


def _leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def example_needles(name: str) -> list[Needle]:
    """Every personnummer and every piece of content in example ``name``.

    Content is every string that is not routing (an agency, a consent id), a
    time, or a lower-case code (a kind, a need area, a role, a staff id).
    """
    needles: list[Needle] = []
    for path, text in _leaves(_example(name), name):
        with contextlib.suppress(PersonnummerError):
            needles += personnummer_needles(text, f"{path} (personnummer)")
            continue
        if (
            len(text) < MIN_NEEDLE
            or text in AGENCIES
            or _UUID.fullmatch(text)
            or _CODE.fullmatch(text)
            or _is_time(text)
        ):
            continue
        needles += text_needles(text, path)
    return needles


def all_needles() -> list[Needle]:
    """The needles of every example the demo sends, its CHILD_NUMBER and its staff's names."""
    needles = personnummer_needles(CHILD_NUMBER, "CHILD_NUMBER")
    for name in sent_examples():
        needles += example_needles(name)
    for staff_id, name in STAFF.values():
        needles += text_needles(name, f"the name of staff {staff_id}")
    unique: dict[str, Needle] = {}
    for needle in needles:
        unique.setdefault(needle.text, needle)
    return list(unique.values())


# --- the places searched ----------------------------------------------------------------------


def _cell_bytes(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()


def sqlite_rows(path: Path) -> tuple[dict[str, int], list[Cell]]:
    """Every table's row count, and every non-null cell of every row of every table."""
    counts: dict[str, int] = {}
    cells: list[Cell] = []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({quoted})")]
            # S608: the name comes from sqlite_master and is quoted; there is no input here.
            rows = db.execute(f"SELECT * FROM {quoted}").fetchall()  # noqa: S608
            counts[table] = len(rows)
            for number, row in enumerate(rows):
                for column, value in zip(columns, row, strict=True):
                    data = _cell_bytes(value)
                    if data is not None:
                        where = f"{path.name} table {table} column {column} row {number}"
                        cells.append(Cell(where, data))
    return counts, cells


def log_lines(path: Path, root: Path) -> list[Cell]:
    """Every line of the log file ``path``, named by file and line number."""
    name = path.relative_to(root)
    return [
        Cell(f"{name} line {number}", line)
        for number, line in enumerate(path.read_bytes().splitlines(), start=1)
    ]


def files_outside_adapters(workdir: Path) -> list[Cell]:
    """Every file under the demo directory but the adapters' own (their stores, configs)."""
    adapters = workdir / "adapters"
    return [
        Cell(str(path.relative_to(workdir)), path.read_bytes())
        for path in sorted(workdir.rglob("*"))
        if path.is_file() and not path.is_relative_to(adapters)
    ]


def find(cells: Iterable[Cell], needles: list[Needle]) -> list[str]:
    """``where: what`` for every needle in every cell, in raw bytes or in decoded, folded text."""
    found = []
    for cell in cells:
        folded = cell.data.decode("utf-8", errors="ignore").casefold()
        found += [
            f"{cell.where}: {needle.what}"
            for needle in needles
            if needle.raw in cell.data or needle.folded in folded
        ]
    return found


def _report(found: list[str]) -> str:
    shown = "\n  ".join(found[:40])
    more = f"\n  … and {len(found) - 40} more" if len(found) > 40 else ""
    return f"{len(found)} needles found where they must never be:\n  {shown}{more}"


# --- the demo, once ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def needles() -> list[Needle]:
    """Every needle of the demo's data."""
    return all_needles()


def _logs(workdir: Path) -> list[Path]:
    return sorted((workdir / "logs").glob("*.log"))


# --- the checks -------------------------------------------------------------------------------


def test_the_needles_cover_the_demos_data(needles: list[Needle]) -> None:
    """Every written form of both children's numbers, their surnames and the free text are needles."""
    texts = {needle.text for needle in needles}
    assert {"121212-1212", "121212+1212", "1212121212", "201212121212", "20121212-1212"} <= texts
    assert {"140315-2380", "1403152380", "201403152380"} <= texts
    assert {"Exempelsson", "Provsson", "5000-K123456-26", "+46 8 123 456 78"} <= texts
    assert set(sent_examples()) == {
        "canonical-team_invitation.json",
        "police-concern_report.json",
        "school-referral.json",
    }
    referral = _example("school-referral.json")
    assert referral["behov"][0]["beskrivning"] in texts
    assert json.dumps(referral["sammanfattning"])[1:-1] in texts  # "\u00d6kande frånvaro …"
    police = _example("police-concern_report.json")
    assert police["iakttagelser"] in texts
    assert not texts & set(AGENCIES)
    assert all(len(text) >= MIN_NEEDLE for text in texts)


def test_the_broker_store_holds_no_plaintext_nor_personnummer(
    demo_run: DemoRun, needles: list[Needle]
) -> None:
    """No needle in any column of any row of any table of the broker's database."""
    counts, cells = sqlite_rows(demo_run.workdir / "broker.db")
    found = find(cells, needles)
    assert not found, _report(found)
    # Not vacuous: the store searched is the demo's, with what its steps make.
    assert {"messages", "status_events", "consents", "audit_entries", "deadlines"} <= set(counts)
    assert counts["messages"] >= 6  # six messages sent: steps 2, 3, 4, 5 and two in 6
    assert counts["consents"] == 1
    assert counts["audit_entries"] >= counts["messages"]
    assert counts["status_events"] > 0
    assert sum(len(cell.data) for cell in cells) > 20_000


def test_no_log_line_holds_plaintext_nor_personnummer(
    demo_run: DemoRun, needles: list[Needle]
) -> None:
    """No needle in any line the broker or any of the five adapters logged."""
    logs = _logs(demo_run.workdir)
    assert {path.stem for path in logs} == {"broker", *AGENCIES}
    cells = [cell for path in logs for cell in log_lines(path, demo_run.workdir)]
    found = find(cells, needles)
    assert not found, _report(found)
    # Not vacuous: the logs are whole and are this run's (each message the broker stored is
    # in the broker's log; every process logged it was serving and more).
    assert len(cells) >= 100
    for path in logs:
        text = path.read_text(encoding="utf-8")
        assert '"event": "broker_serving"' in text or '"event": "adapter_serving"' in text, path
        assert text.count("\n") >= 10, path
    counts, rows = sqlite_rows(demo_run.workdir / "broker.db")
    broker_log = (demo_run.workdir / "logs" / "broker.log").read_text(encoding="utf-8")
    message_ids = {
        cell.data.decode() for cell in rows if " table messages column message_id " in cell.where
    }
    assert len(message_ids) == counts["messages"]
    assert all(message_id in broker_log for message_id in message_ids)


def test_no_file_outside_the_adapters_holds_plaintext_nor_personnummer(
    demo_run: DemoRun, needles: list[Needle]
) -> None:
    """No needle in the raw bytes of any file but the adapters': database, -wal, keys, logs."""
    cells = files_outside_adapters(demo_run.workdir)
    found = find(cells, needles)
    assert not found, _report(found)
    names = {cell.where for cell in cells}
    assert "broker.db" in names
    assert {f"logs/{name}.log" for name in ("broker", *AGENCIES)} <= names
    # A WAL left behind (the broker stopped without a checkpoint) was searched with the rest.
    assert {
        name for name in ("broker.db-wal", "broker.db-shm") if (demo_run.workdir / name).exists()
    } <= names
    assert sum(len(cell.data) for cell in cells) > 100_000


def test_the_search_finds_what_the_adapters_hold_by_design(
    demo_run: DemoRun, needles: list[Needle]
) -> None:
    """The same dump and search find the children's numbers and the text in the recipients' stores."""
    _counts, cells = sqlite_rows(demo_run.workdir / "adapters" / "lidingo-socialtjanst.db")
    found = find(cells, needles)
    # In a table's column, not only somewhere in the file: the dump reads bytes columns.
    assert any(" column " in where and "CHILD_NUMBER as YYMMDDNNNN" in where for where in found)
    for example in sent_examples():
        assert any(f": {example}." in where for where in found), f"nothing of {example} found"
    assert any("police-concern_report.json.barn.personnummer" in where for where in found)
    assert any(".barn.efternamn" in where for where in found)
    # And in the raw bytes of a whole database file, as the sweep of files reads them.
    bup = demo_run.workdir / "adapters" / "bup-lidingo.db"
    whole = find([Cell(bup.name, bup.read_bytes())], needles)
    assert any("school-referral.json.elev.efternamn" in where for where in whole), whole


def test_the_search_finds_a_needle_planted_in_the_broker_store_and_a_log(
    demo_run: DemoRun, needles: list[Needle], tmp_path: Path
) -> None:
    """A needle written into a copy of the broker's store or a log line is found and named."""
    copy = tmp_path / "broker.db"
    shutil.copyfile(demo_run.workdir / "broker.db", copy)
    referral = _example("school-referral.json")
    with contextlib.closing(sqlite3.connect(copy)) as db, db:
        db.execute(
            "UPDATE messages SET reason = ? WHERE rowid = (SELECT min(rowid) FROM messages)",
            (referral["elev"]["efternamn"],),
        )
        db.execute(
            "UPDATE audit_entries SET entry = ? WHERE seq = (SELECT max(seq) FROM audit_entries)",
            (json.dumps({"note": referral["sammanfattning"]}).encode(),),
        )
    _counts, cells = sqlite_rows(copy)
    found = find(cells, needles)
    assert any(
        w.startswith("broker.db table messages column reason ") and "elev.efternamn" in w
        for w in found
    ), found
    assert any(
        w.startswith("broker.db table audit_entries column entry ") and "JSON-escaped" in w
        for w in found
    ), found
    log = tmp_path / "logs" / "broker.log"
    log.parent.mkdir()
    shutil.copyfile(demo_run.workdir / "logs" / "broker.log", log)
    with log.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"event": "planted", "detail": f"pnr {CHILD_NUMBER}"}) + "\n")
    lines = log_lines(log, tmp_path)
    assert find(lines, needles) == [
        f"logs/broker.log line {len(lines)}: CHILD_NUMBER as YYMMDD-NNNN"
    ]

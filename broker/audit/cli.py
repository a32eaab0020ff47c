"""``backa audit …``: what a security officer does with the log on their own machine.

* ``verify`` — an export against signed checkpoints, offline; names the first bad index.
* ``extract`` — one child's entries (the pseudonym is computed here, from the
  personnummer and the area pseudonym key; the broker never sees the number).
* ``review`` — a sample for the systematic log review: reads of the log outside
  office hours, every refusal, every consent revocation.
* ``vkey`` — the verifier key of the log's checkpoints, from the area directory.

Exit codes: 0 verified / done, 1 the log does not verify or input is unusable, 2 bad usage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console

from broker.audit.note import CheckpointError, open_checkpoint, vkey
from broker.audit.verify import SignedSize, verify_export

__all__ = ["app"]

app = typer.Typer(
    help=(
        "The audit log for security officers: verify an export against signed checkpoints, "
        "extract one child's entries, and print a sample for the systematic log review."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def _fail(message: str, code: int = 1) -> typer.Exit:
    Console(stderr=True).print(f"error: {message}", markup=False)
    return typer.Exit(code)


def _lines(export: Path) -> Iterator[bytes]:
    try:
        with export.open("rb") as handle:
            yield from handle
    except OSError as exc:
        raise _fail(f"cannot read {export}: {exc.strerror}") from exc


def _verifier(text: str) -> str:
    path = Path(text)
    if "+" not in text and path.exists():
        return path.read_text(encoding="utf-8").strip()
    return text.strip()


@app.command("verify", short_help="Check an export against signed checkpoints, offline.")
def verify_command(
    export: Annotated[Path, typer.Option("--export", help="The export (JSON lines) to check.")],
    broker_key: Annotated[
        str,
        typer.Option(
            "--broker-key",
            help="The log's verifier key (vkey text, or a file holding it): 'backa audit vkey'.",
        ),
    ],
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint", help="A signed checkpoint (repeatable); the export must reach it."
        ),
    ] = None,
) -> None:
    """Rebuild the tree from the export and compare it with each signed checkpoint.

    Reports the first bad index: a missing or reordered line, an entry that is
    not what the tree holds there, or a root that differs from the signed one.
    Without --checkpoint only the export's own consistency is checked.
    """
    verifier = _verifier(broker_key)
    signed: list[SignedSize] = []
    for path in checkpoint or []:
        try:
            _origin, size, root = open_checkpoint(path.read_text(encoding="utf-8"), verifier)
        except OSError as exc:
            raise _fail(f"cannot read {path}: {exc.strerror}") from exc
        except (CheckpointError, ValueError) as exc:
            raise _fail(f"{path}: the checkpoint does not verify ({exc})") from exc
        signed.append(SignedSize(size=size, root=root))
    report = verify_export(_lines(export), signed)
    console = Console()
    if report.ok:
        sizes = ", ".join(str(s) for s in report.checked_sizes) or "none given"
        console.print(
            f"verified: {report.entries} entries; signed checkpoints matched at sizes {sizes}",
            markup=False,
        )
        return
    console.print(
        f"NOT VERIFIED: first bad index {report.first_bad}: {report.problem}", markup=False
    )
    raise typer.Exit(1)


@app.command("vkey", short_help="Print the verifier key of the log's checkpoints.")
def vkey_command(
    area_dir: Annotated[Path, typer.Option("--area-dir", help="The area directory (public part).")],
) -> None:
    """The C2SP verifier key of the broker's checkpoints, from the verified area directory."""
    from broker.audit.log import origin_for  # noqa: PLC0415 - pulls in the database layer
    from keys.errors import KeysError  # noqa: PLC0415
    from keys.setup import load_directory  # noqa: PLC0415

    try:
        directory = load_directory(area_dir)
    except KeysError as exc:
        raise _fail(str(exc)) from exc
    broker = directory.broker_agency()
    entry = directory.current_entry(broker, now=datetime.now(UTC)) if broker else None
    if entry is None:
        raise _fail("the directory has no current broker key")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    from schemas.common import b64url_decode  # noqa: PLC0415

    key = Ed25519PublicKey.from_public_bytes(b64url_decode(entry.signing_key))
    Console().print(vkey(origin_for(directory.area), key), markup=False)


def _entries(export: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for raw in _lines(export):
        if raw.strip():
            line = json.loads(raw)
            yield int(line["index"]), dict(line["entry"])


@app.command("extract", short_help="One child's log extract, from the broker or an export.")
def extract_command(  # noqa: PLR0917 - typer passes each option as a parameter
    personnummer: Annotated[
        str,
        typer.Option("--personnummer", prompt=True, hide_input=True, help="The child's number."),
    ],
    pseudonym_key: Annotated[
        Path, typer.Option("--pseudonym-key", help="The area pseudonym key file.")
    ],
    export: Annotated[
        Path | None, typer.Option("--export", help="Search this export instead of the broker.")
    ] = None,
    broker_url: Annotated[
        str | None, typer.Option("--broker-url", help="The broker, e.g. https://localhost:8443.")
    ] = None,
    officer_dir: Annotated[
        Path | None,
        typer.Option("--officer-dir", help="The officer's client.crt and client.key."),
    ] = None,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="The area CA certificate (ca.crt).")
    ] = None,
    allow_insecure_keys: Annotated[
        bool,
        typer.Option("--allow-insecure-keys", help="Accept a dev key file (development only)."),
    ] = False,
) -> None:
    """Every entry about one child (patient data law's log extract), as JSON lines.

    The pseudonym is computed here from the number and the area pseudonym key;
    only the pseudonym is sent to the broker (over mutual TLS, with the
    officer's certificate), and the number is never printed. With --export the
    extract is made from an export file instead, offline.
    """
    from keys.errors import KeysError, PersonnummerError  # noqa: PLC0415
    from keys.keystore import read_private_key  # noqa: PLC0415
    from keys.pseudonym import PseudonymKey, pseudonym_from_text  # noqa: PLC0415
    from keys.settings import KeySettings  # noqa: PLC0415

    if (export is None) == (broker_url is None):
        raise _fail("give either --export FILE or --broker-url URL", code=2)
    passphrase = KeySettings.from_env().passphrase()
    try:
        stored = read_private_key(
            pseudonym_key, passphrase=passphrase, allow_insecure=allow_insecure_keys
        )
        child = pseudonym_from_text(
            personnummer, PseudonymKey(stored.secret), today=datetime.now(STOCKHOLM).date()
        )
    except PersonnummerError as exc:
        raise _fail(f"not a valid personnummer: {exc}") from exc
    except KeysError as exc:
        raise _fail(str(exc)) from exc
    if export is not None:
        found = [(i, e) for i, e in _entries(export) if e.get("child") == child]
    else:
        if officer_dir is None or ca_cert is None:
            raise _fail("--broker-url needs --officer-dir and --ca-cert", code=2)
        found = _fetch_child(str(broker_url), child, officer_dir, ca_cert, passphrase)
    for index, entry in found:
        # Plain output: one JSON object per line, never wrapped to a terminal's width.
        typer.echo(json.dumps({"index": index, "entry": entry}, ensure_ascii=False))
    Console(stderr=True).print(f"{len(found)} entries about this child", markup=False)


def _fetch_child(
    base: str, child: str, officer_dir: Path, ca_cert: Path, passphrase: bytes | None
) -> list[tuple[int, dict[str, Any]]]:
    """Page through GET /v1/audit/entries?child=… with the officer's certificate."""
    import asyncio  # noqa: PLC0415

    import aiohttp  # noqa: PLC0415

    from keys.ca import client_ssl_context  # noqa: PLC0415

    context = client_ssl_context(
        cert_file=officer_dir / "client.crt",
        key_file=officer_dir / "client.key",
        ca_file=ca_cert,
        passphrase=passphrase,
    )

    async def fetch() -> list[tuple[int, dict[str, Any]]]:
        found: list[tuple[int, dict[str, Any]]] = []
        after: int | None = None
        async with aiohttp.ClientSession() as session:
            while True:
                params = {"child": child, "limit": "500"}
                if after is not None:
                    params["after"] = str(after)
                async with session.get(
                    f"{base.rstrip('/')}/v1/audit/entries", params=params, ssl=context
                ) as response:
                    if response.status != 200:  # noqa: PLR2004 - HTTP OK
                        raise _fail(f"the broker answered {response.status}")
                    page = await response.json()
                found += [(int(e["index"]), dict(e["entry"])) for e in page["entries"]]
                after = page.get("next_after")
                if after is None:
                    return found

    try:
        return asyncio.run(fetch())
    except aiohttp.ClientError as exc:
        raise _fail(f"cannot reach the broker: {type(exc).__name__}") from exc


@app.command("review", short_help="A sample for the systematic log review.")
def review_command(
    export: Annotated[Path, typer.Option("--export", help="The export (JSON lines) to review.")],
    office_start: Annotated[
        int, typer.Option("--office-start", help="Office hours start (hour).")
    ] = 7,
    office_end: Annotated[int, typer.Option("--office-end", help="Office hours end (hour).")] = 18,
) -> None:
    """Every read of the log outside office hours (Stockholm time, weekends too), every
    refusal and every consent revocation, oldest first, one line each."""
    if not 0 <= office_start < office_end <= 24:  # noqa: PLR2004 - hours of a day
        raise _fail("office hours must satisfy 0 <= start < end <= 24", code=2)
    counts = {"read outside office hours": 0, "refusal": 0, "consent revoked": 0}
    for index, entry in _entries(export):
        at = datetime.fromisoformat(str(entry["at"])).astimezone(STOCKHOLM)
        event = entry.get("event")
        why = None
        if event == "audit_read" and not _office_hours(at, office_start, office_end):
            why = "read outside office hours"
        elif event == "rejected" or (event == "receipt" and entry.get("status") == "rejected"):
            why = "refusal"
        elif event == "consent_revoked":
            why = "consent revoked"
        if why is None:
            continue
        counts[why] += 1
        detail = {
            k: entry[k] for k in ("actor", "query", "reason", "sender", "message_id") if k in entry
        }
        typer.echo(f"{index}\t{at.isoformat()}\t{why}\t{json.dumps(detail, ensure_ascii=False)}")
    Console(stderr=True).print(
        "; ".join(f"{what}: {n}" for what, n in counts.items()), markup=False
    )


def _office_hours(at: datetime, start: int, end: int) -> bool:
    weekday = at.weekday() < 5  # noqa: PLR2004 - Monday..Friday
    return weekday and time(start) <= at.time() < (time(end) if end < 24 else time.max)  # noqa: PLR2004

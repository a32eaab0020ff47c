"""``backa keys``: make an area's keys, rotate an agency's keys, show the signed directory.

The only place in ``keys`` that reads the clock, the environment and the
system's randomness; everything it calls takes them as arguments. Errors of
the ``keys`` tree are printed as one line without a traceback.

This command must never print, log or echo a passphrase or a private key.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from keys.area import load_area
from keys.errors import KeysError
from keys.settings import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, KeySettings
from keys.setup import AreaLayout, init_area, load_directory, rotate_agency

__all__ = ["app"]

INSECURE_FLAG = "--insecure-dev-keys"

NO_PASSPHRASE = (
    f"No key passphrase: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}, "
    f"or pass {INSECURE_FLAG} to write unencrypted keys for development only."
)
BOTH_MODES = (
    f"A key passphrase is set ({PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}) and "
    f"{INSECURE_FLAG} was given; unset the passphrase or drop the flag."
)
INSECURE_WARNING = (
    "WARNING: private keys are written UNENCRYPTED. They are for development only: "
    "never use them for real agencies or real children's data."
)

app = typer.Typer(
    name="keys",
    help=(
        "Area keys: the offline area root that certifies every agency's keys, the area "
        "CA for mutual TLS, each agency's signing and encryption keys, and the signed "
        "directory that lists them.\n\n"
        f"Private keys are encrypted with the passphrase in {PASSPHRASE_ENV} (or in the "
        f"file named by {PASSPHRASE_FILE_ENV}). To begin: backa keys init --area "
        "deploy/areas/demo.toml --out var/demo-keys --insecure-dev-keys"
    ),
    short_help="Area keys, certificates and the signed directory of agency keys.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)

_PIPE_WIDTH = 160


def _console(*, stderr: bool = False) -> Console:
    # Made per call so that COLUMNS and redirected streams are seen as they are now;
    # into a pipe, rich's 80 columns would cut kids and agency ids in the table.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr, width=width)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except KeysError as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None


def _passphrase(*, insecure: bool) -> bytes | None:
    """The passphrase from the environment, or exit 2 saying how to provide one."""
    try:
        passphrase = KeySettings.from_env().passphrase()
    except KeysError as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    if passphrase is None and not insecure:
        _console(stderr=True).print(NO_PASSPHRASE, markup=False)
        raise typer.Exit(2)
    if passphrase is not None and insecure:
        _console(stderr=True).print(BOTH_MODES, markup=False)
        raise typer.Exit(2)
    if insecure:
        _console(stderr=True).print(INSECURE_WARNING, style="bold red", markup=False)
    return passphrase


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _utc(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("init", short_help="Create a new area's keys, certificates and signed directory.")
def init_command(
    area: Annotated[
        Path,
        typer.Option(
            "--area",
            help="The area description (TOML): the area id and name, its agencies and "
            "its officers. Example: deploy/areas/demo.toml.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="New directory to write everything to. It must not exist yet, or be empty.",
            file_okay=False,
        ),
    ],
    insecure_dev_keys: Annotated[
        bool,
        typer.Option(
            INSECURE_FLAG,
            help="Write private keys UNENCRYPTED instead of asking for a passphrase. "
            "For development and demos only.",
        ),
    ] = False,
) -> None:
    """Create a new area: its root key, its CA, and keys and certificates for everyone in it.

    Reads the area description and writes, under --out: public/ (root.pub, the
    area root public key that every component pins; directory.json, every
    agency's public keys signed by the root; ca.crt), root/ (the root and CA
    private keys: move them offline right away), broker/ (the broker's signing
    key and TLS certificate), agencies/ID/ (each agency's signing and
    encryption keys and client certificate), officers/ID/ (client
    certificates of security officers and operators) and adapters/pseudonym.key
    (the child pseudonym key, for the agencies' adapters only, never the
    broker).

    Private keys are encrypted with the passphrase from BACKA_KEY_PASSPHRASE,
    or read from the file named by BACKA_KEY_PASSPHRASE_FILE.
    """
    passphrase = _passphrase(insecure=insecure_dev_keys)
    with _one_line_errors():
        config = load_area(area)
        report = init_area(
            config,
            out,
            passphrase=passphrase,
            insecure=insecure_dev_keys,
            now=datetime.now(UTC),
            rng=os.urandom,
        )
    _console().print(
        f"Area {report.area}: keys for {_count(len(report.agency_kids), 'agency', 'agencies')}, "
        f"the broker and {_count(len(report.officers), 'officer', 'officers')} written to "
        f"{report.out} ({len(report.files)} files).",
        markup=False,
    )
    _console().print(f"Area root public key (pin this): {report.root_key}", markup=False)
    _console().print(
        f"Move {AreaLayout(report.out).root_dir} offline now; see README.txt there.",
        markup=False,
    )


@app.command("rotate", short_help="Give one agency new keys; the old ones stay for an overlap.")
def rotate_command(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="The area key directory made by 'backa keys init' (with its root/ present).",
            exists=True,
            file_okay=False,
        ),
    ],
    agency: Annotated[
        str,
        typer.Option("--agency", help="Id of the agency to rotate, or 'broker' for the broker."),
    ],
    overlap_days: Annotated[
        int | None,
        typer.Option(
            "--overlap-days",
            min=0,
            help="Days the old key may still open and verify messages sealed before the "
            "rotation. Default: rotation_overlap_days of the area file.",
        ),
    ] = None,
    insecure_dev_keys: Annotated[
        bool,
        typer.Option(
            INSECURE_FLAG,
            help="The key directory was made with unencrypted development keys; write the "
            "new keys unencrypted too.",
        ),
    ] = False,
) -> None:
    """Give one agency new signing and encryption keys under a new key id.

    From now on senders seal to the new key. The old key is re-certified with
    an end: it may still open and verify messages sealed before now until the
    overlap has passed. New private keys are written next to the old ones
    (which are kept) in agencies/ID/, and public/directory.json is re-signed.
    Needs the root key (root/root.key) and the passphrase from
    BACKA_KEY_PASSPHRASE or BACKA_KEY_PASSPHRASE_FILE.
    """
    passphrase = _passphrase(insecure=insecure_dev_keys)
    overlap = None if overlap_days is None else timedelta(days=overlap_days)
    with _one_line_errors():
        report = rotate_agency(
            directory,
            agency,
            passphrase=passphrase,
            insecure=insecure_dev_keys,
            now=datetime.now(UTC),
            rng=os.urandom,
            overlap=overlap,
        )
    _console().print(
        f"Rotated {report.agency}: new key id {report.new_kid}. Old key id {report.old_kid} "
        f"is sealed from {_utc(report.seal_until)} UTC and opens until "
        f"{_utc(report.open_until)} UTC.",
        markup=False,
    )


@app.command("show", short_help="Verify the signed directory and list every key in it.")
def show_command(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="The area key directory made by 'backa keys init'; only its public/ is read.",
            exists=True,
            file_okay=False,
        ),
    ],
) -> None:
    """Verify the signed directory against the pinned area root and list its entries.

    Reads public/root.pub and public/directory.json; every entry must carry a
    valid root signature, or the command names the bad entry and exits 1. Times
    are UTC. A key with seal_until is no longer used for new messages; after
    open_until it is not used at all.
    """
    with _one_line_errors():
        verified = load_directory(directory)
    table = Table(title=f"Directory of area {verified.area} (all entries verified)")
    table.add_column("agency", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("kid", overflow="fold")
    table.add_column("valid_from")
    table.add_column("seal_until")
    table.add_column("open_until")
    for entry in sorted(verified.entries(), key=lambda e: (e.agency, e.valid_from, e.kid)):
        table.add_row(
            entry.agency,
            entry.agency_type.value,
            entry.kid,
            _utc(entry.valid_from),
            _utc(entry.seal_until),
            _utc(entry.open_until),
        )
    console = _console()
    console.print(table)
    console.print(f"Area root: {verified.root_key}", markup=False)

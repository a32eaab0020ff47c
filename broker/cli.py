"""``backa broker``: set up an area's RabbitMQ and run the broker service.

Each command is one function below, decorated with ``@app.command``; adding a
command is appending a function (see the end of the module). Errors of the
broker and keys trees are printed as one line without a traceback (exit 1);
bad usage exits 2.

This command must never print or log a password: provisioning shows a
password only as the name of the file it is kept in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from broker.amqp import BrokerAmqpError
from broker.definitions import DEFAULT_VHOST, render_definitions_json
from broker.provision import (
    ProvisionError,
    ProvisionReport,
    RabbitmqctlRunner,
    provision,
)
from keys.area import load_area
from keys.errors import KeysError
from keys.setup import load_directory
from schemas.directory import AgencyType

__all__ = ["app"]

app = typer.Typer(
    name="broker",
    help=(
        "The broker between the agencies of a Backa barnet area. Agencies' adapters "
        "publish encrypted, signed messages to RabbitMQ; the broker checks who sent "
        "each one and whether a consent or a legal basis allows it, writes it to the "
        "audit log and routes it to each recipient agency's queue.\n\n"
        "To set up RabbitMQ for an area made with 'backa keys init': first "
        "'backa broker provision --area-dir DIR' (one RabbitMQ user and password per "
        "agency, and the broker's), then start the broker, which declares the "
        "exchanges and queues itself. 'backa broker definitions' writes the same "
        "exchanges and queues as a RabbitMQ definitions file, for review or for "
        "RabbitMQ's load_definitions."
    ),
    short_help="Set up an area's RabbitMQ and run the broker.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)

_PIPE_WIDTH = 160

AreaDirOption = Annotated[
    Path,
    typer.Option(
        "--area-dir",
        help="The area key directory made by 'backa keys init'; its public/ directory "
        "(root.pub and the signed directory.json) says which agencies exist.",
        exists=True,
        file_okay=False,
    ),
]
VhostOption = Annotated[
    str,
    typer.Option(
        "--vhost",
        help="The RabbitMQ virtual host of the area.",
    ),
]


def _console(*, stderr: bool = False) -> Console:
    # Made per call so that COLUMNS and redirected streams are seen as they are now.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _say(text: str) -> None:
    _console().print(text, markup=False)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (ProvisionError, BrokerAmqpError) as exc:
        # The operator's terminal may see the detail; an HTTP client never does.
        detail = f" ({exc.detail})" if exc.detail else ""
        _console(stderr=True).print(f"error: {exc}{detail}", markup=False)
        raise typer.Exit(1) from None
    except KeysError as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None


def _names(users: tuple[str, ...]) -> str:
    return ", ".join(users) if users else "none"


def _print_report(report: ProvisionReport) -> None:
    if report.dry_run:
        _say(
            "Dry run: nothing was run and no password file was written. On a RabbitMQ "
            "that has none of this yet, provision would run (an existing user gets "
            "change_password instead of add_user):"
        )
        for command in report.commands:
            _say(f"  {command.display()}")
        if report.new_passwords:
            _say(f"New password files it would write: {_names(report.new_passwords)}.")
        return
    _say(f"Vhost {report.vhost}: {'created' if report.vhost_created else 'already there'}.")
    _say(f"Users added: {_names(report.users_created)}.")
    _say(f"Users whose password was set again from its file: {_names(report.users_updated)}.")
    _say(f"Permissions set: {_names(report.permissions_set)}.")
    _say(f"New passwords written: {_names(report.new_passwords)}.")
    folders = sorted({str(p.parent) for p in report.password_files.values()})
    _say(
        f"Password files are in {', '.join(folders)}: give each agency's adapter only "
        "its own <agency>.password file, and the broker its own."
    )
    for user in report.unknown_users:
        _console(stderr=True).print(
            f"warning: user {user} has permissions on vhost {report.vhost} but is not in "
            "the directory; if it is an agency that left the area, run: "
            f"rabbitmqctl clear_permissions -p {report.vhost} {user}",
            markup=False,
        )


@app.command("provision", short_help="Create the area's RabbitMQ vhost, users and permissions.")
def provision_command(
    area_dir: AreaDirOption,
    vhost: VhostOption = DEFAULT_VHOST,
    passwords_dir: Annotated[
        Path | None,
        typer.Option(
            "--passwords-dir",
            help="Where the AMQP password files are kept. Default: AREA_DIR/amqp.",
            file_okay=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the rabbitmqctl commands instead of running them; passwords are "
            "never printed, only the files they come from.",
        ),
    ] = False,
) -> None:
    """Create the area's RabbitMQ vhost, one user per agency, the broker's user, and permissions.

    Each agency of the signed directory gets a RabbitMQ user named exactly as
    its agency id, which may publish to the exchange backa.ingress and read
    its own queue agency.ID, nothing else. RabbitMQ checks that the user_id
    of every message equals the name of the user who sent it, and that is how
    the broker knows which agency published. The broker's user
    (backa-broker) may declare and use the area's exchanges and queues.

    Passwords are made once and written to AREA_DIR/amqp/USER.password
    (readable by the owner only); running provision again reuses them, so it
    is safe to repeat and never disconnects a running adapter. It runs
    rabbitmqctl on this machine (as root, or as a user with RabbitMQ's Erlang
    cookie), or the command in BACKA_RABBITMQCTL, e.g. 'docker compose exec -T
    rabbitmq rabbitmqctl'. Exchanges and queues are not made here: the broker
    declares them when it starts.
    """
    with _one_line_errors():
        report = provision(
            area_dir,
            vhost=vhost,
            runner=RabbitmqctlRunner(),
            passwords_dir=passwords_dir,
            dry_run=dry_run,
        )
    _print_report(report)


@app.command("definitions", short_help="Write the area's exchanges and queues as RabbitMQ JSON.")
def definitions_command(
    area_dir: Annotated[
        Path | None,
        typer.Option(
            "--area-dir",
            help="The area key directory made by 'backa keys init' (its verified directory "
            "names the agencies). Give this or --area.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    area: Annotated[
        Path | None,
        typer.Option(
            "--area",
            help="The area description (TOML) instead of a key directory, e.g. "
            "deploy/areas/demo.toml. Give this or --area-dir.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    vhost: VhostOption = DEFAULT_VHOST,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="File to write. Default: standard output.", dir_okay=False),
    ] = None,
) -> None:
    """Write the area's RabbitMQ definitions: vhost, exchanges, quorum queues and bindings.

    The file is what 'rabbitmqctl import_definitions FILE' or RabbitMQ's
    load_definitions setting accepts. It holds no users and no passwords:
    'backa broker provision' makes those, and the permissions it sets are
    listed in the file under "backa" for review (RabbitMQ ignores that key).
    The broker declares the same exchanges and queues when it starts, so
    importing the file is optional. deploy/rabbitmq/definitions.json is this
    command's output for the demo area.
    """
    with _one_line_errors():
        if area is not None and area_dir is None:
            agencies = [a.id for a in load_area(area).agency]
        elif area_dir is not None and area is None:
            directory = load_directory(area_dir)
            agencies = [
                a for a in directory.agencies() if directory.agency_type(a) is not AgencyType.BROKER
            ]
        else:
            _console(stderr=True).print(
                "error: give exactly one of --area-dir and --area", markup=False
            )
            raise typer.Exit(2)
        try:
            text = render_definitions_json(vhost=vhost, agencies=agencies)
        except ValueError as exc:
            _console(stderr=True).print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        _console(stderr=True).print(f"error: cannot write {out}: {exc.strerror}", markup=False)
        raise typer.Exit(1) from None
    _say(f"Wrote the definitions of vhost {vhost} ({len(agencies)} agencies) to {out}.")


# --- more commands --------------------------------------------------------------------------
#
# `serve` (run the broker: connect, broker.amqp.declare_topology, consume backa.ingress) and
# `migrate` (the broker's database schema) are added here, each as one more function
# decorated with @app.command("NAME", short_help=...), in the shape of the two above:
# typer options as Annotated parameters, the work inside `with _one_line_errors():`.


@app.command("serve", short_help="Run the broker: route messages and serve the HTTP API.")
def serve_command(
    allow_insecure_keys: Annotated[
        bool,
        typer.Option(
            "--allow-insecure-keys",
            help="Accept key files written with --insecure-dev-keys (development only).",
        ),
    ] = False,
) -> None:
    """Run the broker until SIGTERM: consume backa.ingress, verify, check policy, record, route.

    Reads its settings from the environment: BACKA_AREA_DIR (the area's key
    directory), BACKA_AMQP_URL (RabbitMQ, as the broker's user), BACKA_DATABASE_URL
    (SQLite file by default, or postgresql+asyncpg://…), BACKA_POLICY_FILE,
    BACKA_HTTP_HOST / BACKA_HTTP_PORT for the mutual-TLS HTTP API, and the key
    passphrase from BACKA_KEY_PASSPHRASE or BACKA_KEY_PASSPHRASE_FILE. The
    database schema is migrated to the latest version at start. On SIGTERM it stops
    taking messages, finishes those in flight and exits 0.
    """
    import asyncio  # noqa: PLC0415 - keep `backa --help` fast

    from broker.main import StartupError, serve  # noqa: PLC0415
    from broker.settings import BrokerSettings  # noqa: PLC0415
    from broker.store import StoreUnavailable  # noqa: PLC0415
    from keys.settings import KeySettings  # noqa: PLC0415

    with _one_line_errors():
        try:
            settings = BrokerSettings()
        except ValueError as exc:
            _console(stderr=True).print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None
        passphrase = KeySettings.from_env().passphrase()
        try:
            asyncio.run(
                serve(settings, passphrase=passphrase, allow_insecure_keys=allow_insecure_keys)
            )
        except (StartupError, StoreUnavailable) as exc:
            _console(stderr=True).print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None


@app.command("migrate", short_help="Bring the broker's database schema up to date.")
def migrate_command() -> None:
    """Migrate the database at BACKA_DATABASE_URL to the latest schema (Alembic head).

    `backa broker serve` does this at start too; run it on its own before starting
    several broker instances against one PostgreSQL.
    """
    import asyncio  # noqa: PLC0415

    from broker.settings import BrokerSettings  # noqa: PLC0415
    from broker.store import StoreUnavailable, migrate  # noqa: PLC0415

    settings = BrokerSettings()
    try:
        asyncio.run(migrate(settings.database_url.get_secret_value()))
    except StoreUnavailable as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    _say("The database schema is up to date.")

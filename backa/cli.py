"""The ``backa`` command: one entry point that composes each package's sub-commands.

Each package keeps its own typer app in its ``cli.py`` (``keys.cli`` today;
broker, adapter, audit and demo as they are built) and this module only adds
them as groups, so that ``broker`` and ``adapters`` never have to import each
other (docs/DECISIONS.md). This module must never hold logic of its own
beyond wiring and start-up (logging).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from adapters.cli import app as adapter_app
from backa.demo import DemoSettings, run
from broker.audit.cli import app as audit_app
from broker.cli import app as broker_app
from keys import logs
from keys.cli import app as keys_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="backa",
    help=(
        "Backa broker carries the messages of the Backa barnet model (referrals, team "
        "invitations, concern reports, consents and receipts) between the preschool, "
        "school, social services, health care, child psychiatry and police around a "
        "child, end-to-end encrypted and each one allowed by a consent or a legal basis. "
        "Each group below manages one part of it; run 'backa GROUP --help' to see its "
        "commands."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)

# One line per group; later groups (broker, adapter, audit) are added here.
app.add_typer(keys_app, name="keys")
app.add_typer(broker_app, name="broker")
app.add_typer(adapter_app, name="adapter")
app.add_typer(audit_app, name="audit")


@app.command()
def demo(
    workdir: Path | None = typer.Option(
        None,
        "--workdir",
        help="Where the demo writes its keys and passphrase (default var/demo, or BACKA_DEMO_DIR).",
    ),
) -> None:
    """Run the demonstration: what Backa broker can do so far, step by step, for real.

    Creates the keys of the demo area (deploy/areas/demo.toml), seals a referral
    about a child from the school to social services and BUP, carries it through
    the RabbitMQ at BACKA_AMQP_URL, opens it at each recipient and shows the
    refusals that keep it safe. Exits 0 only if every step did what it says.
    `make demo` starts RabbitMQ first if it is not running.
    """
    settings = DemoSettings()
    if workdir is not None:
        settings = settings.model_copy(update={"demo_dir": workdir})
    if not asyncio.run(run(settings, Console())):
        raise typer.Exit(code=1)


def main() -> None:
    """Run the ``backa`` command (the console script of the package)."""
    logs.configure()
    app()

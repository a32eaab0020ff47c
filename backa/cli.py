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
        help="Where the demo keeps its keys, databases and configs (default var/demo, or "
        "BACKA_DEMO_DIR); emptied at the start of every run.",
    ),
    keep_running: bool = typer.Option(
        False,  # noqa: FBT003 - typer's default-first signature
        "--keep-running",
        help="Leave every process running after the scenario, for a person to click "
        "through the web inbox and the security officers' console; Ctrl-C stops them.",
    ),
) -> None:
    """Run the whole Backa barnet model for real: a broker and five agency adapters.

    Makes keys for deploy/areas/demo.toml and the RabbitMQ users (vhost
    BACKA_DEMO_VHOST, default backa; needs rabbitmqctl, i.e. root), starts
    `backa broker serve` and one `backa adapter run` per agency as separate
    processes, and drives the scenario through the agencies' own interfaces:
    consent, a referral answered by two agencies, Barnets team accepted in the
    web inbox, a police concern report by law, an escalation, a refusal and a
    revocation in flight, and the security officer verifying the audit log.
    Exits 0 only if every step did what it says; a failure names the step.
    `make demo` starts RabbitMQ first if it is not running.
    """
    settings = DemoSettings()
    if workdir is not None:
        settings = settings.model_copy(update={"demo_dir": workdir})
    if not asyncio.run(run(settings, Console(), keep_running=keep_running)):
        raise typer.Exit(code=1)


def main() -> None:
    """Run the ``backa`` command (the console script of the package)."""
    logs.configure()
    app()

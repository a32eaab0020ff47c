"""``backa adapter …``: run one agency's adapter, and make its config's secrets.

Wiring only: the work is in ``adapters.main``. Errors are one line on stderr
and exit code 1 (2 for bad usage), never a traceback.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["app"]

app = typer.Typer(
    help=(
        "An adapter runs at one agency: it holds the agency's keys, takes messages from "
        "the agency system over a local HTTP API (and a web inbox for staff), and sends "
        "and receives them through the broker, end-to-end encrypted."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.command("run", short_help="Run one agency's adapter until SIGTERM.")
def run_command(
    agency: Annotated[str, typer.Option("--agency", help="The agency id (must match the config).")],
    config: Annotated[
        Path, typer.Option("--config", help="The adapter's TOML config (docs/adapters/README.md).")
    ],
    allow_insecure_keys: Annotated[
        bool,
        typer.Option(
            "--allow-insecure-keys",
            help="Accept key files written with --insecure-dev-keys (development only).",
        ),
    ] = False,
) -> None:
    """Run the adapter: consume the agency's queue, hand over, send from the outbox.

    Serves the agency API (and the web inbox, if enabled) on http_host:http_port
    from the config, localhost by default. RabbitMQ may be away at start: the API
    takes submissions into the outbox and they are sent once it is back. On
    SIGTERM it stops and exits 0.
    """
    import asyncio  # noqa: PLC0415 - keep `backa --help` fast

    from adapters.main import StartupError, load, run  # noqa: PLC0415

    try:
        settings = load(config, agency)
        asyncio.run(run(settings, allow_insecure_keys=allow_insecure_keys))
    except StartupError as exc:
        Console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None


@app.command("token", short_help="Make a bearer token for an agency system.")
def token_command(
    name: Annotated[str, typer.Option("--name", help="The agency system's name.")],
) -> None:
    """Print a new bearer token and the [[systems]] entry (its SHA-256) for the config.

    The token is shown once: give it to the agency system; the config keeps only the digest.
    """
    from adapters.config import token_digest  # noqa: PLC0415

    token = secrets.token_urlsafe(32)
    console = Console()
    console.print(f"token (give to {name}, shown once): {token}", markup=False)
    console.print(
        f'[[systems]]\nname = "{name}"\ntoken_sha256 = "{token_digest(token)}"', markup=False
    )


@app.command("hash-password", short_help="Hash a web-inbox password for the config.")
def hash_password_command(
    password: Annotated[
        str, typer.Option("--password", prompt=True, hide_input=True, help="The password.")
    ],
) -> None:
    """Print the scrypt hash of a password, for [[web.accounts]] password_hash."""
    from adapters.web import hash_password  # noqa: PLC0415

    Console().print(hash_password(password), markup=False)

"""Provisioning an area's RabbitMQ vhost, users and permissions with ``rabbitmqctl``.

One RabbitMQ user per agency of the verified directory, named exactly as the
agency id: RabbitMQ refuses a publish whose AMQP ``user_id`` property is not
the name of the user who logged in (unless that user has the ``impersonator``
tag, which provision therefore removes), and that check is how the broker
knows which agency published. Plus the broker's own user. Permissions are
those of :mod:`broker.definitions`: an agency may publish to
``backa.ingress`` and read ``agency.<id>``, nothing else.

Passwords are made once and kept in ``<area dir>/amqp/<user>.password``
(0600, in a 0700 directory). A later run reuses every file it finds, so
running provision again changes nothing and never breaks an adapter that is
connected; a user whose file is missing gets a new password. Passwords reach
``rabbitmqctl`` on its standard input, never as an argument (where ``ps``
would show them to every user of the machine).

Provision declares no exchange or queue: the broker declares the topology
when it starts (:func:`broker.amqp.declare_topology`).

Errors: :class:`ProvisionError` (code ``provision_failed``) names the step
that failed and what ``rabbitmqctl`` said. This module must never print, log
or put into an error message a password.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Protocol

from broker.definitions import (
    BROKER_USER,
    Permission,
    agency_permission,
    broker_permission,
    check_vhost,
)
from broker.errors import BrokerError
from keys.errors import KeysError
from keys.keystore import ensure_private_dir, write_file_atomic
from keys.setup import load_directory
from schemas.directory import AgencyType

__all__ = [
    "RABBITMQCTL_ENV",
    "Command",
    "ProvisionError",
    "ProvisionReport",
    "RabbitmqctlError",
    "RabbitmqctlRunner",
    "Runner",
    "password_file",
    "provision",
]

#: Environment variable with the command to run instead of ``rabbitmqctl``, split like a
#: shell would, e.g. ``docker compose exec -T rabbitmq rabbitmqctl``.
RABBITMQCTL_ENV: Final = "BACKA_RABBITMQCTL"

#: Length of a new password in random bytes (``secrets.token_urlsafe`` makes 43 characters).
PASSWORD_BYTES: Final = 32

_PRIVATE_FILE = 0o600
_PRIVATE_DIR = 0o700
# What a password may look like: what token_urlsafe makes, and nothing rabbitmqctl's
# line-oriented standard input could cut short.
_PASSWORD = re.compile(r"^[A-Za-z0-9_\-.~+/=]{16,256}$")
#: Users this module must never take over: RabbitMQ's default administrator.
_RESERVED_USERS: Final = frozenset({"guest"})
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MAX_DETAIL = 400


class ProvisionError(BrokerError):
    """Provisioning failed: the message names the step, ``detail`` says what went wrong there."""

    code: ClassVar[str] = "provision_failed"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Provisioning RabbitMQ failed."

    def __init__(self, message: str | None = None, *, detail: str = "") -> None:
        """``message`` names the step; ``detail`` is what rabbitmqctl or the OS said."""
        super().__init__(message)
        #: Foreign text (rabbitmqctl's stderr, an OS error), for the operator; never a password.
        self.detail = detail


class RabbitmqctlError(Exception):
    """``rabbitmqctl`` could not be run or exited with an error; the message says which."""

    def __init__(self, message: str, *, returncode: int | None = None) -> None:
        super().__init__(message)
        #: The exit status, or None if the command did not run to the end.
        self.returncode = returncode


class Runner(Protocol):
    """Runs one ``rabbitmqctl`` command and returns its standard output."""

    def run(self, args: Sequence[str], *, stdin: str | None = None) -> str:
        """Run ``rabbitmqctl ARGS`` with ``stdin`` as its input; RabbitmqctlError on failure."""
        ...


def _default_command() -> tuple[str, ...]:
    configured = os.environ.get(RABBITMQCTL_ENV, "").strip()
    if configured:
        return tuple(shlex.split(configured))
    # Debian installs it in /usr/sbin, which is not on an ordinary user's PATH.
    return (shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl",)


def _clean(text: str) -> str:
    detail = " ".join(_ANSI.sub("", text).split())
    return detail if len(detail) <= _MAX_DETAIL else detail[:_MAX_DETAIL] + "…"


@dataclass(frozen=True)
class RabbitmqctlRunner:
    """Runs the real ``rabbitmqctl`` (no shell) with a timeout.

    ``command`` defaults to ``$BACKA_RABBITMQCTL`` split like a shell would,
    else ``rabbitmqctl`` from PATH or /usr/sbin.
    """

    command: tuple[str, ...] | None = None
    timeout: float = 60.0

    def run(self, args: Sequence[str], *, stdin: str | None = None) -> str:
        """Run ``rabbitmqctl ARGS``; its standard output, or RabbitmqctlError with its stderr."""
        argv = [*(self.command or _default_command()), *args]
        try:
            done = subprocess.run(  # noqa: S603 - a fixed program, arguments as a list, no shell
                argv,
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise RabbitmqctlError(
                f"{argv[0]} not found: install RabbitMQ's rabbitmqctl here, or set "
                f"{RABBITMQCTL_ENV} to the command that runs it"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise RabbitmqctlError(f"no answer after {self.timeout:.0f} s") from exc
        except OSError as exc:
            raise RabbitmqctlError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            said = _clean(done.stderr) or _clean(done.stdout) or "no message"
            raise RabbitmqctlError(
                f"exited with status {done.returncode}: {said}", returncode=done.returncode
            )
        return done.stdout


@dataclass(frozen=True)
class Command:
    """One ``rabbitmqctl`` command of a provisioning run, safe to print."""

    args: tuple[str, ...]
    #: The file whose password goes to the command's standard input, if any.
    password_from: Path | None = None

    def display(self) -> str:
        """The command as a shell line; a password is shown only as the file it comes from."""
        line = shlex.join(("rabbitmqctl", *self.args))
        if self.password_from is not None:
            line += f"  # password on stdin, from {self.password_from}"
        return line


@dataclass(frozen=True)
class ProvisionReport:
    """What a provisioning run did, or in a dry run would do on a RabbitMQ that has none of it."""

    vhost: str
    dry_run: bool
    vhost_created: bool
    #: Users that did not exist and were added.
    users_created: tuple[str, ...]
    #: Users that existed; their password was set again from their file.
    users_updated: tuple[str, ...]
    #: Users whose password file this run wrote (a new password).
    new_passwords: tuple[str, ...]
    #: Users whose permissions on the vhost were set (they were missing or different).
    permissions_set: tuple[str, ...]
    #: Users with permissions on the vhost that the directory does not name (left as they are).
    unknown_users: tuple[str, ...]
    password_files: Mapping[str, Path]
    commands: tuple[Command, ...]


def password_file(passwords_dir: Path, user: str) -> Path:
    """Where the AMQP password of ``user`` is kept."""
    return passwords_dir / f"{user}.password"


def _agencies(area_dir: Path) -> list[str]:
    try:
        directory = load_directory(area_dir)
    except KeysError as exc:
        raise ProvisionError(
            f"reading the verified directory of {area_dir} failed", detail=str(exc)
        ) from exc
    return [a for a in directory.agencies() if directory.agency_type(a) is not AgencyType.BROKER]


def _read_password(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ProvisionError(
                f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}); "
                "run chmod 600 on it, or delete it to make a new password"
            )
        password = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"reading the password file {path} failed", detail=str(exc)) from exc
    if not _PASSWORD.fullmatch(password):
        raise ProvisionError(
            f"{path} does not hold a usable password (16 to 256 URL-safe characters); "
            "delete it to make a new one"
        )
    return password


def _new_password(rng: Callable[[int], str]) -> str:
    password = rng(PASSWORD_BYTES)
    if not _PASSWORD.fullmatch(password):
        raise ProvisionError("the password generator returned an unusable password")
    return password


def _prepare_dir(passwords_dir: Path, *, dry_run: bool) -> None:
    if dry_run or not passwords_dir.exists():
        return
    mode = stat.S_IMODE(passwords_dir.stat().st_mode)
    if mode != _PRIVATE_DIR:
        passwords_dir.chmod(_PRIVATE_DIR)


class _Session:
    """Runs (or, in a dry run, only records) the commands of one provisioning run."""

    def __init__(self, runner: Runner, *, dry_run: bool) -> None:
        self._runner = runner
        self.dry_run = dry_run
        self.commands: list[Command] = []

    def query(self, step: str, args: Sequence[str]) -> list[dict[str, object]]:
        if self.dry_run:
            return []
        output = self._call(step, Command(tuple(args)), None)
        try:
            rows = json.loads(output) if output.strip() else []
        except json.JSONDecodeError as exc:
            raise ProvisionError(f"{step}: rabbitmqctl did not answer in JSON") from exc
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ProvisionError(f"{step}: rabbitmqctl answered JSON of an unexpected shape")
        return rows

    def change(self, step: str, command: Command, password: str | None = None) -> None:
        if self.dry_run:
            self.commands.append(command)
            return
        self._call(step, command, password)

    def _call(self, step: str, command: Command, password: str | None) -> str:
        self.commands.append(command)
        try:
            return self._runner.run(
                command.args, stdin=None if password is None else password + "\n"
            )
        except RabbitmqctlError as exc:
            raise ProvisionError(f"{step} failed", detail=f"{command.display()}: {exc}") from exc


def _json(args: Sequence[str]) -> list[str]:
    return [*args, "--formatter", "json", "--quiet"]


def _passwords(
    files: Mapping[str, Path], *, rng: Callable[[int], str], dry_run: bool
) -> tuple[dict[str, str], list[str]]:
    """Each user's password, reused from its file or made and written now; and the new ones."""
    passwords: dict[str, str] = {}
    new: list[str] = []
    for user, path in files.items():
        if path.exists():
            passwords[user] = _read_password(path)
            continue
        new.append(user)
        if dry_run:
            continue
        passwords[user] = _new_password(rng)
        try:
            ensure_private_dir(path.parent)
            write_file_atomic(path, (passwords[user] + "\n").encode("ascii"), mode=_PRIVATE_FILE)
        except KeysError as exc:
            raise ProvisionError(
                f"writing the password file of {user} failed", detail=str(exc)
            ) from exc
    return passwords, new


@dataclass(frozen=True)
class _State:
    """What RabbitMQ holds now, as far as provisioning cares."""

    vhost_exists: bool
    permissions: Mapping[str, tuple[str, str, str]]
    tags: Mapping[str, object]


def _state(session: _Session, vhost: str) -> _State:
    vhosts = {str(r.get("name")) for r in session.query("listing vhosts", _json(["list_vhosts"]))}
    permissions: dict[str, tuple[str, str, str]] = {}
    if vhost in vhosts:
        rows = session.query(
            f"listing permissions on vhost {vhost!r}", _json(["list_permissions", "-p", vhost])
        )
        permissions = {
            str(r.get("user")): (str(r.get("configure")), str(r.get("write")), str(r.get("read")))
            for r in rows
        }
    tags = {
        str(r.get("user")): r.get("tags") or []
        for r in session.query("listing users", _json(["list_users"]))
    }
    return _State(vhost_exists=vhost in vhosts, permissions=permissions, tags=tags)


def provision(
    area_dir: Path,
    *,
    vhost: str,
    runner: Runner,
    passwords_dir: Path | None = None,
    rng: Callable[[int], str] = secrets.token_urlsafe,
    broker_user: str = BROKER_USER,
    dry_run: bool = False,
) -> ProvisionReport:
    """Make RabbitMQ hold the area's vhost, one user per agency, the broker user and permissions.

    Reads the verified directory of ``area_dir`` (a key directory made by
    ``backa keys init``). Password files live in ``passwords_dir``, by default
    ``<area_dir>/amqp``. With ``dry_run`` nothing is run and nothing written:
    the report lists the commands a RabbitMQ that has none of it would get.
    """
    try:
        check_vhost(vhost)
    except ValueError as exc:
        raise ProvisionError(str(exc)) from exc
    agencies = _agencies(area_dir)
    for name in (broker_user, *_RESERVED_USERS):
        if name in agencies:
            raise ProvisionError(
                f"agency id {name!r} is the name of another RabbitMQ user; rename the agency"
            )
    passwords_dir = passwords_dir if passwords_dir is not None else area_dir / "amqp"
    rules: list[Permission] = [
        broker_permission(broker_user),
        *(agency_permission(a) for a in agencies),
    ]
    files = {p.user: password_file(passwords_dir, p.user) for p in rules}

    # Local first: a password file exists before its user does, so a run that
    # stops half-way is finished by the next one with the same passwords.
    _prepare_dir(passwords_dir, dry_run=dry_run)
    passwords, new_passwords = _passwords(files, rng=rng, dry_run=dry_run)

    session = _Session(runner, dry_run=dry_run)
    state = _state(session, vhost)
    if not state.vhost_exists:
        session.change(f"adding vhost {vhost!r}", Command(("add_vhost", vhost)))
    created: list[str] = []
    updated: list[str] = []
    permissions_set: list[str] = []
    for rule in rules:
        user, path = rule.user, files[rule.user]
        if user in state.tags:
            updated.append(user)
            session.change(
                f"setting the password of {user}",
                Command(("change_password", user), password_from=path),
                passwords.get(user),
            )
            if state.tags[user]:
                # An impersonator (or administrator) could publish under another agency's name.
                session.change(f"clearing the tags of {user}", Command(("set_user_tags", user)))
        else:
            created.append(user)
            session.change(
                f"adding user {user}",
                Command(("add_user", user), password_from=path),
                passwords.get(user),
            )
        wanted = (rule.configure, rule.write, rule.read)
        if state.permissions.get(user) != wanted:
            permissions_set.append(user)
            session.change(
                f"setting the permissions of {user} on vhost {vhost!r}",
                Command(("set_permissions", "-p", vhost, user, *wanted)),
            )

    return ProvisionReport(
        vhost=vhost,
        dry_run=dry_run,
        vhost_created=not state.vhost_exists,
        users_created=tuple(created),
        users_updated=tuple(updated),
        new_passwords=tuple(new_passwords),
        permissions_set=tuple(permissions_set),
        unknown_users=tuple(sorted(set(state.permissions) - set(files))),
        password_files=files,
        commands=tuple(session.commands),
    )

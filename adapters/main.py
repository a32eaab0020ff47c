"""``backa adapter run``: one agency's adapter (queues, agency API, web inbox) in one process.

Start-up loads and checks everything before it serves: the directory against
the pinned area root, this agency's keys against the directory, the area
pseudonym key, the policy file, the store (refusing another agency's file).
RabbitMQ may be away: the API takes submissions into the outbox meanwhile.
SIGTERM or SIGINT stops the HTTP server, lets the current step finish and
exits 0.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog
from aiohttp import web

from adapters.api import create_api
from adapters.broker_client import BrokerClient
from adapters.canonical import Mapping
from adapters.config import AdapterConfig, ConfigError
from adapters.mappings import mapping_for
from adapters.runtime import AdapterRuntime, utc_now
from adapters.store import AdapterStore, AdapterStoreError
from adapters.web import LocalAccount, StaffAuth, setup_web
from keys.ca import client_ssl_context
from keys.envelope import OpeningKey, RecipientKeys
from keys.errors import KeysError
from keys.policy import PolicyError, load_policy
from keys.pseudonym import PseudonymKey
from keys.setup import AreaLayout, load_agency_keys, load_directory, load_pseudonym_key

_log = structlog.get_logger("adapters.main")


class StartupError(Exception):
    """The adapter cannot start; the message says what to fix."""


@dataclass(frozen=True)
class Running:
    """What ``run`` reports once it serves (for tests and the demo)."""

    http_port: int
    runtime: AdapterRuntime


def _session_secret(config: AdapterConfig) -> bytes:
    path = config.web.session_secret_file
    if path is None:
        return secrets.token_bytes(32)  # sessions end with the process; fine for one host
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


def _staff_auth(config: AdapterConfig) -> StaffAuth:
    web_config = config.web
    try:
        if web_config.auth == "header":
            return StaffAuth(
                secret=_session_secret(config),
                trust_proxy_header=True,
                staff_header=web_config.staff_header,
                name_header=web_config.name_header,
                cookie_secure=web_config.secure_cookies,
            )
        return StaffAuth(
            secret=_session_secret(config),
            accounts={
                a.staff_id: LocalAccount(a.staff_id, a.name, a.password_hash)
                for a in web_config.accounts
            },
            cookie_secure=web_config.secure_cookies,
        )
    except ValueError as exc:
        raise StartupError(f"web: {exc}") from exc


async def build(
    config: AdapterConfig, *, allow_insecure_keys: bool
) -> tuple[AdapterRuntime, Mapping]:
    """The runtime and mapping for ``config``; raises StartupError naming what is wrong."""
    passphrase = config.passphrase()
    insecure = allow_insecure_keys or config.insecure_dev_keys
    try:
        directory = load_directory(config.area_dir)
        keys = load_agency_keys(
            config.area_dir, config.agency, passphrase=passphrase, allow_insecure=insecure
        )
        pseudonym = PseudonymKey(
            load_pseudonym_key(config.area_dir, passphrase=passphrase, allow_insecure=insecure)
        )
    except KeysError as exc:
        raise StartupError(f"area_dir {config.area_dir}: {exc}") from exc
    try:
        policy = load_policy(config.policy_file)
    except PolicyError as exc:
        raise StartupError(f"policy_file: {exc}") from exc
    agency_type = directory.agency_type(config.agency)
    if agency_type is None:
        raise StartupError(f"agency {config.agency!r} is not in the area directory")
    try:
        mapping = mapping_for(agency_type, config.mapping, agency=config.agency)
    except ValueError as exc:
        raise StartupError(f"mapping: {exc}") from exc
    try:
        store = await AdapterStore.open(config.database, config.agency)
    except AdapterStoreError as exc:
        raise StartupError(f"database: {exc}") from exc
    recipient = RecipientKeys(
        agency=config.agency,
        keys={
            kid: OpeningKey(pair.private_key, keys.open_until.get(kid))
            for kid, pair in keys.encryption_keys.items()
        },
    )
    gap_source = None
    if config.broker_url is not None:
        layout = AreaLayout(config.area_dir)
        try:
            context = client_ssl_context(
                cert_file=layout.agency_dir(config.agency) / "client.crt",
                key_file=layout.agency_dir(config.agency) / "client.key",
                ca_file=layout.ca_cert,
                passphrase=passphrase,
            )
        except (OSError, ValueError, KeysError) as exc:
            raise StartupError(f"broker_url: this agency's client certificate: {exc}") from exc
        gap_source = BrokerClient(config.broker_url, context).gaps
    runtime = AdapterRuntime(
        agency_id=config.agency,
        store=store,
        directory=directory,
        signer=keys.sender,
        recipient_keys=recipient,
        pseudonym_key=pseudonym,
        policy=policy,
        amqp_url=config.amqp_url_with_password(),
        message_ttl=timedelta(days=config.message_ttl_days),
        handover_mode=config.handover.mode,
        webhook_url=config.handover.webhook_url,
        webhook_render=mapping.render_received,
        webhook_timeout_s=config.handover.webhook_timeout_s,
        gap_source=gap_source,
    )
    return runtime, mapping


async def run(
    config: AdapterConfig,
    *,
    allow_insecure_keys: bool = False,
    ready: asyncio.Future[Running] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the adapter until ``stop`` is set or SIGTERM/SIGINT arrives."""
    runtime, mapping = await build(config, allow_insecure_keys=allow_insecure_keys)
    app = create_api(runtime, mapping, config, clock=utc_now)
    if config.web.enabled:
        setup_web(app, runtime, _staff_auth(config))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.http_host, config.http_port)
        await site.start()
        port = int(runner.addresses[0][1]) if runner.addresses else config.http_port
        await runtime.start()
        _log.info("adapter_serving", agency=config.agency, host=config.http_host, port=port)
        if ready is not None and not ready.done():
            ready.set_result(Running(http_port=port, runtime=runtime))
        await stop.wait()
    finally:
        await runner.cleanup()
        await runtime.stop()
        await runtime.store.close()


def load(path: Path, agency: str | None) -> AdapterConfig:
    """The config at ``path``, as StartupError when unusable."""
    from adapters.config import load_config  # noqa: PLC0415 - keeps the CLI's import light

    try:
        return load_config(path, agency=agency)
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc

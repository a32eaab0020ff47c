"""``backa broker serve``: the consumer and the HTTP API in one process.

Start-up loads and verifies everything before taking a message: the
directory against the pinned area root, the broker's signing key, the policy
file, the database schema (migrated to head), the TLS certificate. SIGTERM or
SIGINT stops taking new messages, lets those in flight finish (up to the
grace period), closes the HTTP server and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog
from aiohttp import web

from broker.audit.console import add_audit_console
from broker.audit.http import add_audit_routes
from broker.audit.log import AuditLog, origin_for
from broker.batching import GroupCommitStore
from broker.consent_http import add_consent_routes
from broker.consents import ConsentBook, ConsentPolicy, ConsentRegistry
from broker.deadlines import (
    DeadlineRules,
    DeadlineRulesError,
    WorkingCalendar,
    load_deadline_rules,
)
from broker.gaps_http import add_gap_routes
from broker.http import create_app, serve_http
from broker.metrics import Metrics
from broker.service import BrokerService, utc_now
from broker.settings import BrokerSettings
from broker.store import SqlStore, create_store, migrate
from broker.watchdog import Watchdog
from keys.ca import server_ssl_context
from keys.directory import Directory
from keys.envelope import SenderKey
from keys.errors import KeysError
from keys.policy import PolicyError, PolicyFile, load_policy
from keys.setup import AreaLayout, load_broker_key, load_directory

_log = structlog.get_logger("broker.main")


class StartupError(Exception):
    """The broker cannot start; the message says what to fix."""


@dataclass(frozen=True)
class Running:
    """What ``serve`` reports once it is up (for tests and the CLI)."""

    http_port: int


def _load(
    settings: BrokerSettings, passphrase: bytes | None, allow_insecure: bool
) -> tuple[Directory, SenderKey, PolicyFile]:
    try:
        directory = load_directory(settings.area_dir)
        broker_key = load_broker_key(
            settings.area_dir, passphrase=passphrase, allow_insecure=allow_insecure
        )
    except KeysError as exc:
        raise StartupError(f"{settings.area_dir}: {exc}") from exc
    try:
        policy = load_policy(settings.policy_file)
    except PolicyError as exc:
        raise StartupError(f"BACKA_POLICY_FILE: {exc}") from exc
    return directory, broker_key.sender, policy


async def serve(
    settings: BrokerSettings,
    *,
    passphrase: bytes | None,
    allow_insecure_keys: bool = False,
    ready: asyncio.Future[Running] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the broker until ``stop`` is set or SIGTERM/SIGINT arrives."""
    directory, broker_key, policy = _load(settings, passphrase, allow_insecure_keys)
    deadline_rules = _load_deadlines(settings)
    layout = AreaLayout(settings.area_dir)
    ssl_context = server_ssl_context(
        cert_file=layout.broker_dir / "tls.crt",
        key_file=layout.broker_dir / "tls.key",
        ca_file=layout.ca_cert,
        passphrase=passphrase,
    )
    database_url = settings.database_url.get_secret_value()
    if database_url.startswith("sqlite+aiosqlite:///"):
        path = database_url.removeprefix("sqlite+aiosqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    await migrate(database_url)
    store = create_store(database_url)
    book = ConsentBook()
    service = BrokerService(
        amqp_url=settings.amqp_url.get_secret_value(),
        store=GroupCommitStore(store),
        directory=directory,
        broker_key=broker_key,
        policy=ConsentPolicy(policy=policy, book=book),
        metrics=Metrics(),
        prefetch=settings.prefetch,
        max_bytes=settings.max_message_bytes,
        shutdown_grace_s=settings.shutdown_grace_s,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = None
    try:
        await store.upsert_directory(
            [
                (entry.agency, entry.kid, signed.payload, signed.signature, entry.issued_at)
                for entry, signed in zip(
                    directory.entries(), directory.signed_entries(), strict=True
                )
            ]
        )
        registry = ConsentRegistry(
            store=store,
            book=book,
            policy=policy,
            directory=lambda: directory,
            broadcast=service.broadcast_consent,
        )
        consents = await registry.load()

        async def apply_notice(body: bytes) -> None:
            await registry.apply_notice(body, now=utc_now())

        service.on_control = apply_notice
        watchdog = _watchdog(
            settings,
            store=store,
            directory=directory,
            broker_key=broker_key,
            rules=deadline_rules,
            service=service,
        )
        service.watchdog = watchdog
        await service.start()
        watching = asyncio.create_task(watchdog.run(stop), name="watchdog")
        app = create_app(
            store=store,
            directory=lambda: directory,
            readiness=[("rabbitmq", service.ping), ("store", store.ping)],
            metrics=service.metrics,
            clock=utc_now,
            with_consents=True,
            with_audit=True,
            with_gaps=True,
        )
        add_consent_routes(app, registry)
        add_gap_routes(app, store)
        audit = _mount_audit(app, store, broker_key, directory)
        checkpoints = asyncio.create_task(
            audit.checkpoints_forever(settings.checkpoint_interval_s, stop),
            name="audit-checkpoints",
        )
        runner = await serve_http(
            app, host=settings.http_host, port=settings.http_port, ssl_context=ssl_context
        )
        port = _bound_port(runner, settings.http_port)
        _log.info("broker_serving", http_port=port, area=directory.area, consents=consents)
        if ready is not None:
            ready.set_result(Running(http_port=port))
        await stop.wait()
        _log.info("broker_stopping")
        await checkpoints
        await watching
    finally:
        await service.stop()
        if runner is not None:
            await runner.cleanup()
        await store.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _load_deadlines(settings: BrokerSettings) -> DeadlineRules:
    if settings.demo_time_warp_s:
        _log.warning(
            "demo_time_warp",
            seconds=settings.demo_time_warp_s,
            meaning="the watchdog judges deadlines this far in the future: demonstrations only",
        )
    try:
        return load_deadline_rules(settings.deadlines_file)
    except DeadlineRulesError as exc:
        raise StartupError(f"BACKA_DEADLINES_FILE: {exc}") from exc


def _mount_audit(
    app: web.Application, store: SqlStore, broker_key: SenderKey, directory: Directory
) -> AuditLog:
    """The audit log over the store, with the officer's routes and console on ``app``."""
    audit = AuditLog(store.engine, signer=broker_key, origin=origin_for(directory.area))
    add_audit_routes(app, audit, origin=audit.origin)
    add_audit_console(app, audit, verifier=audit.verifier)
    return audit


def _watchdog(
    settings: BrokerSettings,
    *,
    store: SqlStore,
    directory: Directory,
    broker_key: SenderKey,
    rules: DeadlineRules,
    service: BrokerService,
) -> Watchdog:
    return Watchdog(
        store=store,
        directory=directory,
        broker_key=broker_key,
        rules=rules,
        calendar=WorkingCalendar(rules.calendar),
        publish=service.publish_envelope,
        clock=utc_now,
        # Names the instance that escalated, in the deadline's row (claimed_by).
        instance=f"{socket.gethostname()}-{os.getpid()}",
        interval_s=settings.watchdog_interval_s,
        metrics=service.metrics,
        time_warp=timedelta(seconds=settings.demo_time_warp_s),
    )


def _bound_port(runner: object, configured: int) -> int:
    addresses = getattr(runner, "addresses", [])
    for address in addresses:
        if isinstance(address, tuple) and len(address) > 1:
            return int(address[1])
    return configured

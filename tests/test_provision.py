"""``broker.provision`` on the real RabbitMQ: one user per agency, and what each may do.

The area has two agencies with random ids and a broker user with a random
name (RabbitMQ users are cluster-wide), provisioned once per module into a
scratch vhost; the users are deleted afterwards. Run with ``-p tests.rabbit``
until the root conftest loads that plugin.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed
from typer.testing import CliRunner

from backa.cli import app
from broker.amqp import declare_topology
from broker.provision import (
    ProvisionError,
    ProvisionReport,
    RabbitmqctlError,
    RabbitmqctlRunner,
    password_file,
    provision,
)
from broker.topology import (
    DELIVER_EXCHANGE,
    INGRESS_EXCHANGE,
    INGRESS_QUEUE,
    agency_queue,
    control_queue,
)
from keys.area import parse_area
from keys.setup import init_area
from tests.rabbit import amqp_url_for
from tests.support import T0

pytestmark = pytest.mark.rabbitmq

AREA_TOML = """\
[area]
id = "provision-test"
name = "Provisioning test area"

[[agency]]
id = "{school}"
name = "Testskolan"
type = "school"
municipality = "Testby"

[[agency]]
id = "{social}"
name = "Testby socialtjänst"
type = "social_services"
municipality = "Testby"
"""


@dataclass(frozen=True)
class Area:
    """A provisioned test area: its key directory, its agencies and its broker user."""

    dir: Path
    school: str
    social: str
    broker: str
    vhost: str
    report: ProvisionReport

    @property
    def users(self) -> list[str]:
        """Every RabbitMQ user the area has."""
        return [self.broker, self.school, self.social]

    def password(self, user: str) -> str:
        """The password provision keeps for ``user``."""
        return password_file(self.dir / "amqp", user).read_text(encoding="ascii").strip()


class RefusingRunner:
    """A runner for runs that must not touch RabbitMQ: any command fails the test."""

    def run(self, args: Sequence[str], *, stdin: str | None = None) -> str:
        """Fail the test: nothing should have been run."""
        pytest.fail(f"rabbitmqctl {' '.join(args)} was run")


class FailingAddUser:
    """A runner for an empty RabbitMQ whose add_user fails."""

    def __init__(self) -> None:
        self.stdin: list[str | None] = []

    def run(self, args: Sequence[str], *, stdin: str | None = None) -> str:
        """Answer listings with nothing, fail add_user, accept anything else."""
        self.stdin.append(stdin)
        if args[0] == "add_user":
            raise RabbitmqctlError("exited with status 70: boom", returncode=70)
        return "[]" if args[0].startswith("list_") else ""


def _make_area(base: Path) -> tuple[Path, str, str]:
    tag = uuid.uuid4().hex[:8]
    school, social = f"t{tag}-skola", f"t{tag}-soc"
    out = base / "keys"
    config = parse_area(AREA_TOML.format(school=school, social=social), source="test area")
    init_area(config, out, passphrase=None, insecure=True, now=T0, rng=os.urandom, scrypt_n=2**4)
    return out, school, social


@pytest.fixture(scope="module")
def area(
    tmp_path_factory: pytest.TempPathFactory, scratch_vhost: str, rabbitmqctl: RabbitmqctlRunner
) -> Iterator[Area]:
    """The test area, provisioned once into the module's scratch vhost; its users deleted after."""
    directory, school, social = _make_area(tmp_path_factory.mktemp("area"))
    broker = f"t{uuid.uuid4().hex[:8]}-broker"
    try:
        report = provision(directory, vhost=scratch_vhost, runner=rabbitmqctl, broker_user=broker)
        yield Area(directory, school, social, broker, scratch_vhost, report)
    finally:
        for user in (broker, school, social):
            try:
                rabbitmqctl.run(["delete_user", user])
            except RabbitmqctlError:
                continue  # never created: provision failed before it


@asynccontextmanager
async def connected(area: Area, user: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel with publisher confirms, logged in as ``user`` with its provisioned password."""
    connection = await aio_pika.connect(
        amqp_url_for(area.vhost, user, area.password(user)), timeout=10
    )
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


@pytest.fixture
async def topology(area: Area) -> Area:
    """The area's topology, declared by the broker user as the broker does at start."""
    async with connected(area, area.broker) as channel:
        await declare_topology(channel, [area.school, area.social])
    return area


def _message(user_id: str | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        b"sealed envelope",
        message_id=uuid.uuid4().hex,
        user_id=user_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def test_first_run_creates_every_user_and_password(area: Area) -> None:
    """The first run adds the broker and each agency as users, with new passwords and rights."""
    report = area.report
    assert not report.dry_run
    assert set(report.users_created) == set(area.users)
    assert set(report.new_passwords) == set(area.users)
    assert set(report.permissions_set) == set(area.users)
    assert report.users_updated == ()


async def test_broker_user_declares_the_topology(topology: Area) -> None:
    """The broker's permissions cover declaring every exchange, queue and binding, twice."""
    async with connected(topology, topology.broker) as channel:
        await declare_topology(channel, [topology.school, topology.social])
        await declare_topology(channel, [topology.school, topology.social])
        assert not channel.is_closed, "a refused declaration would have closed the channel"


async def test_agency_publishes_to_ingress_under_its_own_name(
    topology: Area, scratch_amqp: aio_pika.abc.AbstractConnection
) -> None:
    """An agency may publish to backa.ingress with user_id set to its own id."""
    message = _message(user_id=topology.school)
    async with connected(topology, topology.school) as channel:
        exchange = await channel.get_exchange(INGRESS_EXCHANGE, ensure=False)
        await exchange.publish(message, routing_key=INGRESS_QUEUE)
    admin = await scratch_amqp.channel()
    ingress = await admin.get_queue(INGRESS_QUEUE)
    received = await ingress.get(timeout=5)
    await received.ack()
    assert received.message_id == message.message_id
    assert received.user_id == topology.school
    await admin.close()


async def test_agency_cannot_publish_to_deliver(topology: Area) -> None:
    """Publishing to backa.deliver, which only the broker may, closes the channel ACCESS_REFUSED."""
    async with connected(topology, topology.school) as channel:
        exchange = await channel.get_exchange(DELIVER_EXCHANGE, ensure=False)
        with pytest.raises(ChannelAccessRefused):
            await exchange.publish(_message(topology.school), routing_key=topology.social)


async def test_publish_under_another_agency_name_is_refused(topology: Area) -> None:
    """RabbitMQ refuses a user_id that is not the login name: PRECONDITION_FAILED."""
    async with connected(topology, topology.school) as channel:
        exchange = await channel.get_exchange(INGRESS_EXCHANGE, ensure=False)
        with pytest.raises(ChannelPreconditionFailed, match="user_id"):
            await exchange.publish(_message(user_id=topology.social), routing_key=INGRESS_QUEUE)


async def test_agency_consumes_its_own_queue(
    topology: Area, scratch_amqp: aio_pika.abc.AbstractConnection
) -> None:
    """What the broker routes to an agency, that agency's adapter can consume."""
    sent = _message()
    admin = await scratch_amqp.channel(publisher_confirms=True)
    deliver = await admin.get_exchange(DELIVER_EXCHANGE)
    await deliver.publish(sent, routing_key=topology.social)
    await admin.close()
    async with connected(topology, topology.social) as channel:
        queue = await channel.get_queue(agency_queue(topology.social))
        got: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future()
        )

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            if not got.done():
                got.set_result(message)

        await queue.consume(on_message)
        received = await asyncio.wait_for(got, timeout=10)
    assert received.message_id == sent.message_id


async def test_agency_cannot_consume_another_agency_queue(topology: Area) -> None:
    """Consuming another agency's queue closes the channel ACCESS_REFUSED."""
    async with connected(topology, topology.school) as channel:
        queue = await channel.get_queue(agency_queue(topology.social), ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.reject(requeue=True)

        with pytest.raises(ChannelAccessRefused):
            await queue.consume(on_message)


async def test_provision_again_changes_nothing_and_keeps_passwords(
    area: Area, rabbitmqctl: RabbitmqctlRunner
) -> None:
    """A second run reuses every password file, adds no user and sets no permission."""
    before = {user: area.password(user) for user in area.users}
    report = provision(area.dir, vhost=area.vhost, runner=rabbitmqctl, broker_user=area.broker)
    assert report.users_created == ()
    assert report.new_passwords == ()
    assert report.permissions_set == ()
    assert not report.vhost_created
    assert set(report.users_updated) == set(area.users)
    assert {user: area.password(user) for user in area.users} == before
    async with connected(area, area.school):
        pass  # the agency still logs in with the password it had


def test_provision_removes_the_impersonator_tag(area: Area, rabbitmqctl: RabbitmqctlRunner) -> None:
    """An agency user tagged impersonator (free to set any user_id) loses the tag on a re-run."""
    rabbitmqctl.run(["set_user_tags", area.social, "impersonator"])
    provision(area.dir, vhost=area.vhost, runner=rabbitmqctl, broker_user=area.broker)
    users = json.loads(rabbitmqctl.run(["list_users", "--formatter", "json", "--quiet"]))
    assert next(u["tags"] for u in users if u["user"] == area.social) == []


def test_password_files_are_for_the_owner_only(area: Area) -> None:
    """Each password file is 0600 and their directory 0700."""
    folder = area.dir / "amqp"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for user in area.users:
        assert stat.S_IMODE(password_file(folder, user).stat().st_mode) == 0o600


def test_dry_run_runs_nothing_and_shows_no_password(area: Area, tmp_path: Path) -> None:
    """A dry run calls no rabbitmqctl, writes no file, and prints files, not passwords."""
    fresh = tmp_path / "passwords"
    report = provision(
        area.dir,
        vhost="dry-run",
        runner=RefusingRunner(),
        broker_user=area.broker,
        dry_run=True,
        passwords_dir=fresh,
    )
    assert not fresh.exists()
    assert report.dry_run
    shown = [c.display() for c in report.commands]
    assert shown[0] == "rabbitmqctl add_vhost dry-run"
    assert f"rabbitmqctl add_user {area.school}  # password on stdin, from " in "\n".join(shown)
    assert len([c for c in report.commands if c.args[0] == "set_permissions"]) == 3
    kept = provision(
        area.dir, vhost="dry-run", runner=RefusingRunner(), broker_user=area.broker, dry_run=True
    )
    text = "\n".join(c.display() for c in kept.commands)
    for user in area.users:
        assert area.password(user) not in text


def test_error_names_the_step_and_never_the_password(area: Area, tmp_path: Path) -> None:
    """A failing rabbitmqctl becomes ProvisionError naming the step; the password is on stdin."""
    runner = FailingAddUser()
    password = "Pw_" + "x" * 40
    with pytest.raises(ProvisionError, match="adding user") as caught:
        provision(
            area.dir,
            vhost="v",
            runner=runner,
            broker_user=area.broker,
            passwords_dir=tmp_path / "pw",
            rng=lambda _n: password,
        )
    assert caught.value.code == "provision_failed"
    assert "boom" in caught.value.detail
    assert password not in f"{caught.value} {caught.value.detail}"
    assert f"{password}\n" in runner.stdin


def test_agency_named_like_the_broker_user_is_refused(area: Area) -> None:
    """An agency whose id is the broker user's name would take over the broker: refused."""
    with pytest.raises(ProvisionError, match="another RabbitMQ user"):
        provision(
            area.dir, vhost="v", runner=RefusingRunner(), broker_user=area.school, dry_run=True
        )


def test_password_file_readable_by_others_is_refused(area: Area, tmp_path: Path) -> None:
    """A password file other users can read is refused rather than used."""
    folder = tmp_path / "pw"
    folder.mkdir(mode=0o700)
    loose = password_file(folder, area.school)
    loose.write_text(area.password(area.school) + "\n", encoding="ascii")
    loose.chmod(0o644)
    with pytest.raises(ProvisionError, match="chmod 600"):
        provision(
            area.dir,
            vhost="v",
            runner=RefusingRunner(),
            broker_user=area.broker,
            passwords_dir=folder,
            dry_run=True,
        )


def test_cli_dry_run_prints_commands_without_passwords(area: Area) -> None:
    """``backa broker provision --dry-run`` lists the commands and no password."""
    result = CliRunner().invoke(
        app, ["broker", "provision", "--area-dir", str(area.dir), "--vhost", "v", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert f"rabbitmqctl add_user {area.school}" in result.output
    assert "rabbitmqctl set_permissions -p v" in result.output
    # The default broker user; the test's own broker user is a provision() argument only.
    assert "rabbitmqctl add_user backa-broker" in result.output
    for user in (area.school, area.social):
        assert area.password(user) not in result.output


def test_cli_definitions_writes_the_verified_directory_agencies(area: Area, tmp_path: Path) -> None:
    """``backa broker definitions --area-dir`` names an agency queue per directory agency."""
    out = tmp_path / "definitions.json"
    result = CliRunner().invoke(
        app, ["broker", "definitions", "--area-dir", str(area.dir), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    names = {q["name"] for q in json.loads(out.read_text(encoding="utf-8"))["queues"]}
    agencies = (area.school, area.social)
    assert names == {
        "backa.ingress",
        "backa.dead",
        *map(agency_queue, agencies),
        *map(control_queue, agencies),
    }


def test_cli_definitions_wants_one_source(area: Area) -> None:
    """Giving both --area-dir and --area is a usage error (exit 2)."""
    demo = Path(__file__).resolve().parent.parent / "deploy" / "areas" / "demo.toml"
    result = CliRunner().invoke(
        app, ["broker", "definitions", "--area-dir", str(area.dir), "--area", str(demo)]
    )
    assert result.exit_code == 2

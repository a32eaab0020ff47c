"""The passphrase settings and the ``backa keys`` commands, run through typer's CliRunner."""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from backa.cli import app
from keys import cli as keys_cli
from keys.area import load_area
from keys.errors import KeyStoreError
from keys.settings import KeySettings
from keys.setup import init_area, load_directory, rotate_agency
from schemas.common import b64url_decode, b64url_encode

DEMO = Path(__file__).resolve().parent.parent / "deploy" / "areas" / "demo.toml"
FAST_N = 2**4  # scrypt cost for tests only
PASSPHRASE = "cli test passphrase"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without passphrase variables and with fast scrypt in the CLI."""
    monkeypatch.delenv("BACKA_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("BACKA_KEY_PASSPHRASE_FILE", raising=False)
    monkeypatch.setattr(keys_cli, "init_area", functools.partial(init_area, scrypt_n=FAST_N))
    monkeypatch.setattr(
        keys_cli, "rotate_agency", functools.partial(rotate_agency, scrypt_n=FAST_N)
    )


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


# --- settings -----------------------------------------------------------------------------


def test_no_passphrase_variables_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither variable set there is no passphrase."""
    del monkeypatch
    assert KeySettings.from_env().passphrase() is None


def test_the_passphrase_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """BACKA_KEY_PASSPHRASE is the passphrase, as UTF-8 bytes."""
    monkeypatch.setenv("BACKA_KEY_PASSPHRASE", "hemligt lösenord")
    assert KeySettings.from_env().passphrase() == "hemligt lösenord".encode()


def test_the_passphrase_file_loses_one_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A passphrase file's final newline is not part of the passphrase."""
    path = tmp_path / "pass"
    path.write_bytes(b"from a file \n")
    monkeypatch.setenv("BACKA_KEY_PASSPHRASE_FILE", str(path))
    assert KeySettings.from_env().passphrase() == b"from a file "


def test_both_variables_set_is_an_error_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two sources are refused rather than ranked."""
    path = tmp_path / "pass"
    path.write_text("x")
    monkeypatch.setenv("BACKA_KEY_PASSPHRASE", "y")
    monkeypatch.setenv("BACKA_KEY_PASSPHRASE_FILE", str(path))
    with pytest.raises(KeyStoreError, match="BACKA_KEY_PASSPHRASE and BACKA_KEY_PASSPHRASE_FILE"):
        KeySettings.from_env().passphrase()


@pytest.mark.parametrize("content", [None, b"", b"\n"], ids=["missing", "empty", "newline-only"])
def test_a_missing_or_empty_passphrase_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None
) -> None:
    """An unreadable or empty passphrase file is an error naming BACKA_KEY_PASSPHRASE_FILE."""
    path = tmp_path / "pass"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("BACKA_KEY_PASSPHRASE_FILE", str(path))
    with pytest.raises(KeyStoreError, match="BACKA_KEY_PASSPHRASE_FILE names"):
        KeySettings.from_env().passphrase()


@pytest.mark.parametrize("variable", ["BACKA_KEY_PASSPHRASE", "BACKA_KEY_PASSPHRASE_FILE"])
def test_an_empty_variable_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """An empty variable is refused instead of meaning 'no passphrase' or the current dir."""
    monkeypatch.setenv(variable, "")
    with pytest.raises(KeyStoreError, match=f"^{variable} is set but empty"):
        KeySettings.from_env()


# --- help ---------------------------------------------------------------------------------


def test_root_help_explains_the_project_and_lists_the_keys_group() -> None:
    """`backa --help` says what Backa broker is and lists the keys group."""
    result = _run("--help")
    assert result.exit_code == 0
    assert "Backa barnet" in result.output
    assert "keys" in result.output


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("init", ["--area", "--out", "--insecure-dev-keys", "BACKA_KEY_PASSPHRASE"]),
        ("rotate", ["--dir", "--agency", "--overlap-days", "BACKA_KEY_PASSPHRASE"]),
        ("show", ["--dir"]),
    ],
)
def test_each_command_help_exits_0_and_names_its_options(command: str, options: list[str]) -> None:
    """`backa keys COMMAND --help` works and mentions every option."""
    result = _run("keys", command, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in options:
        assert option in result.output


# --- init ---------------------------------------------------------------------------------


def test_init_without_a_passphrase_exits_2_with_one_sentence(tmp_path: Path) -> None:
    """No passphrase and no flag: exit 2, naming both variables and the flag, writing nothing."""
    result = _run("keys", "init", "--area", str(DEMO), "--out", str(tmp_path / "keys"))
    assert result.exit_code == 2
    assert result.output.strip() == keys_cli.NO_PASSPHRASE
    for name in ("BACKA_KEY_PASSPHRASE", "BACKA_KEY_PASSPHRASE_FILE", "--insecure-dev-keys"):
        assert name in result.output
    assert not (tmp_path / "keys").exists()


def test_init_with_a_passphrase_and_the_insecure_flag_exits_2(tmp_path: Path) -> None:
    """Asking for encrypted and unencrypted keys at once is refused."""
    result = _run(
        "keys",
        "init",
        "--area",
        str(DEMO),
        "--out",
        str(tmp_path / "keys"),
        "--insecure-dev-keys",
        env={"BACKA_KEY_PASSPHRASE": PASSPHRASE},
    )
    assert result.exit_code == 2
    assert "--insecure-dev-keys" in result.output


def test_init_with_the_env_passphrase_then_show_lists_every_agency(tmp_path: Path) -> None:
    """init writes an encrypted area and `keys show` verifies it and lists every agency."""
    out = tmp_path / "keys"
    env = {"BACKA_KEY_PASSPHRASE": PASSPHRASE}
    result = _run("keys", "init", "--area", str(DEMO), "--out", str(out), env=env)
    assert result.exit_code == 0, result.output
    assert "UNENCRYPTED" not in result.output
    assert json.loads((out / "root" / "root.key").read_text())["kdf"]["name"] == "scrypt"
    shown = _run("keys", "show", "--dir", str(out))
    assert shown.exit_code == 0, shown.output
    for agency in load_area(DEMO).agency:
        assert agency.id in shown.output
    assert "broker" in shown.output
    assert (out / "public" / "root.pub").read_text().strip() in shown.output


def test_init_with_the_passphrase_file(tmp_path: Path) -> None:
    """BACKA_KEY_PASSPHRASE_FILE works as well as the variable itself."""
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    out = tmp_path / "keys"
    env = {"BACKA_KEY_PASSPHRASE_FILE": str(secret)}
    assert _run("keys", "init", "--area", str(DEMO), "--out", str(out), env=env).exit_code == 0
    assert load_directory(out).area == "lidingo-demo"


def test_insecure_init_prints_a_loud_warning(tmp_path: Path) -> None:
    """With --insecure-dev-keys the command warns that keys are written UNENCRYPTED."""
    out = tmp_path / "keys"
    result = _run("keys", "init", "--area", str(DEMO), "--out", str(out), "--insecure-dev-keys")
    assert result.exit_code == 0, result.output
    assert "UNENCRYPTED" in result.output
    assert "development only" in result.output
    assert json.loads((out / "adapters" / "pseudonym.key").read_text())["kdf"] == {"name": "none"}


def test_a_keys_error_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    """init into a non-empty directory prints one error line and exits 1."""
    out = tmp_path / "keys"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    env = {"BACKA_KEY_PASSPHRASE": PASSPHRASE}
    result = _run("keys", "init", "--area", str(DEMO), "--out", str(out), env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output


def test_a_bad_area_file_is_reported_with_its_field(tmp_path: Path) -> None:
    """An area file mistake reaches the user as the file and field path."""
    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO.read_text(encoding="utf-8").replace('"school"', '"schol"'), "utf-8")
    env = {"BACKA_KEY_PASSPHRASE": PASSPHRASE}
    result = _run("keys", "init", "--area", str(bad), "--out", str(tmp_path / "k"), env=env)
    assert result.exit_code == 1
    assert "bad.toml: agency[0].type: 'schol' is not one of" in result.output


# --- rotate and show ----------------------------------------------------------------------


def test_rotate_then_show_lists_both_keys_of_the_agency(tmp_path: Path) -> None:
    """`keys rotate` adds a new kid and `keys show` lists the old one with its end."""
    out = tmp_path / "keys"
    env = {"BACKA_KEY_PASSPHRASE": PASSPHRASE}
    assert _run("keys", "init", "--area", str(DEMO), "--out", str(out), env=env).exit_code == 0
    before = {e.kid for e in load_directory(out).entries() if e.agency == "bup-lidingo"}
    rotated = _run(
        "keys",
        "rotate",
        "--dir",
        str(out),
        "--agency",
        "bup-lidingo",
        "--overlap-days",
        "7",
        env=env,
    )
    assert rotated.exit_code == 0, rotated.output
    entries = [e for e in load_directory(out).entries() if e.agency == "bup-lidingo"]
    assert len(entries) == 2
    (old,) = [e for e in entries if e.kid in before]
    assert old.seal_until is not None
    assert old.open_until is not None
    assert old.open_until - old.seal_until == timedelta(days=7)
    shown = _run("keys", "show", "--dir", str(out))
    assert all(e.kid in shown.output for e in entries)


def test_rotate_with_a_wrong_passphrase_fails_cleanly(tmp_path: Path) -> None:
    """A wrong passphrase is one error line naming the root key file."""
    out = tmp_path / "keys"
    env = {"BACKA_KEY_PASSPHRASE": PASSPHRASE}
    assert _run("keys", "init", "--area", str(DEMO), "--out", str(out), env=env).exit_code == 0
    result = _run(
        "keys",
        "rotate",
        "--dir",
        str(out),
        "--agency",
        "bup-lidingo",
        env={"BACKA_KEY_PASSPHRASE": "wrong"},
    )
    assert result.exit_code == 1
    assert "wrong passphrase or damaged key file" in result.output
    assert "root.key" in result.output


def test_show_exits_1_naming_a_forged_entry(tmp_path: Path) -> None:
    """A directory entry changed after signing makes `keys show` fail and name it."""
    out = tmp_path / "keys"
    env = {"BACKA_KEY_PASSPHRASE": PASSPHRASE}
    assert _run("keys", "init", "--area", str(DEMO), "--out", str(out), env=env).exit_code == 0
    path = out / "public" / "directory.json"
    bundle = json.loads(path.read_text())
    entry = json.loads(b64url_decode(bundle["entries"][3]["payload"]))
    entry["name"] = "Impostor"
    bundle["entries"][3]["payload"] = b64url_encode(json.dumps(entry).encode())
    path.write_text(json.dumps(bundle))
    result = _run("keys", "show", "--dir", str(out))
    assert result.exit_code == 1
    assert f"entry 3 of the bundle (claims agency {entry['agency']!r}" in result.output
    assert "signature does not verify" in result.output

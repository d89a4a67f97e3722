"""`flask --app app.wsgi keys ...` (docs/governance.md): managed keys from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.governance.keys import KeyRecord, hash_secret
from app.governance.sqlite_store import SQLiteStateStore
from app.keys_cli import keys_group

ROOT = Path(__file__).resolve().parents[2]
STATIC = "pk-static-ops-key-0001"


@pytest.fixture
def gateway_file(tmp_path: Path) -> Path:
    """Return a gateway file with one static key and its state store in tmp_path."""
    path = tmp_path / "gateway.toml"
    path.write_text(f'[state]\npath = "{tmp_path / "state.sqlite"}"\n\n[[keys]]\nname = "ops"\nkey = "{STATIC}"\n')
    return path


def run(gateway_file: Path, *args: str) -> Result:
    """Run the keys group in this process, as the flask command would, with GATEWAY_CONFIG set."""
    return CliRunner().invoke(keys_group, list(args), env={"GATEWAY_CONFIG": str(gateway_file)})


def stored(gateway_file: Path) -> list[KeyRecord]:
    """Return the managed keys the gateway file's state store holds."""
    store = SQLiteStateStore(str(gateway_file.parent / "state.sqlite"))
    try:
        return store.list_keys()
    finally:
        store.close()


def secret_of(output: str) -> str:
    """Return the secret a create or rotate printed."""
    found = re.search(r"^secret: (pk-\S+)$", output, re.MULTILINE)
    assert found, output
    return found.group(1)


def created(gateway_file: Path, *args: str) -> tuple[KeyRecord, str]:
    """Create a key through the CLI; return its stored record and the printed secret."""
    done = run(gateway_file, "create", *args)
    assert done.exit_code == 0, done.output
    return stored(gateway_file)[-1], secret_of(done.stdout)


def test_the_flask_command_creates_a_key_and_lists_it_without_the_secret(gateway_file: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}, "GATEWAY_CONFIG": str(gateway_file)}
    # One real `flask` run checks the wiring (the settings-free app of app/cli.py); the rest run in-process.
    made = subprocess.run([sys.executable, "-m", "flask", "--app", "app.wsgi", "keys", "create", "ci-bot",
                           "--rpm", "5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    secret = secret_of(made.stdout)
    assert "shown once" in made.stdout and "hash" in made.stdout
    [record] = stored(gateway_file)
    assert record.name == "ci-bot" and [s.sha256 for s in record.secrets] == [hash_secret(secret)]
    listed = run(gateway_file, "list")
    assert listed.exit_code == 0, listed.output
    assert record.id in listed.stdout and "ci-bot" in listed.stdout and "rpm=5" in listed.stdout
    assert "static:ops" in listed.stdout
    for hidden in (secret, hash_secret(secret), STATIC, hash_secret(STATIC)):
        assert hidden not in listed.output


def test_create_takes_every_field(gateway_file: Path) -> None:
    record, secret = created(
        gateway_file, "bot", "--models", "openai/gpt-4o*", "--models", "@cat/*", "--rpm", "10", "--tpm", "1000",
        "--max-concurrent", "2", "--budget-usd", "12.5", "--budget-period", "day", "--expires-at",
        "2099-01-01T00:00:00Z", "--metadata", '{"team": "a"}', "--default-config", "pc-saved")
    assert record.id.startswith("key_") and record.secrets[0].sha256 == hash_secret(secret)
    public = record.public()
    assert public["models"] == ["openai/gpt-4o*", "@cat/*"]
    assert public["limits"] == {"rpm": 10, "tpm": 1000, "max_concurrent": 2}
    assert public["budget"] == {"usd": 12.5, "period": "day"}
    assert public["expires_at"] == "2099-01-01T00:00:00Z" and public["metadata"] == {"team": "a"}
    assert public["default_config"] == "pc-saved"
    other, _ = created(gateway_file, "bot-2", "--default-config", '{"provider": "openai"}')
    assert other.default_config == {"provider": "openai"}


def test_list_shows_keys_without_secrets_as_a_table_or_json(gateway_file: Path) -> None:
    record, secret = created(gateway_file, "bot", "--budget-usd", "3")
    revoked, _ = created(gateway_file, "old-bot")
    assert run(gateway_file, "revoke", revoked.id).exit_code == 0
    table = run(gateway_file, "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATE"]
    row = next(line for line in lines if line.startswith(record.id))
    assert "bot" in row and "active (managed)" in row and "0/3 USD per month" in row
    assert "revoked (managed)" in next(line for line in lines if line.startswith(revoked.id))
    done = run(gateway_file, "list", "--json")
    data = json.loads(done.stdout)["data"]
    assert [key["id"] for key in data] == ["static:ops", record.id, revoked.id]
    assert set(data[1]["usage"]) == {"spent_usd", "reserved_usd", "period", "requests_last_60s",
                                     "tokens_last_60s", "in_flight"}
    for hidden in (secret, hash_secret(secret), hash_secret(STATIC)):
        assert hidden not in table.output + done.output


def test_update_changes_the_given_fields_and_keeps_the_rest(gateway_file: Path) -> None:
    record, _ = created(gateway_file, "bot", "--rpm", "5", "--tpm", "100", "--budget-usd", "2", "--models", "a/*")
    done = run(gateway_file, "update", record.id, "--rpm", "7", "--budget-period", "total", "--name", "bot-2",
               "--revoked")
    assert done.exit_code == 0, done.output
    [now] = stored(gateway_file)
    assert now.name == "bot-2" and now.revoked and now.models == ("a/*",)
    assert now.limits.as_json() == {"rpm": 7, "tpm": 100}
    assert now.budget is not None and (now.budget.usd, now.budget.period) == (2.0, "total")
    assert now.secrets == record.secrets
    done = run(gateway_file, "update", record.id, "--tpm", "none", "--budget-usd", "none", "--all-models",
               "--no-revoked", "--expires-at", "2099-01-01")
    assert done.exit_code == 0, done.output
    [now] = stored(gateway_file)
    assert now.limits.as_json() == {"rpm": 7} and now.budget is None and now.models == () and not now.revoked
    assert now.public()["expires_at"] == "2099-01-01T00:00:00Z"


def test_rotate_prints_a_new_secret_and_keeps_the_old_one_for_the_grace(gateway_file: Path) -> None:
    record, old = created(gateway_file, "bot")
    done = run(gateway_file, "rotate", record.id, "--grace-s", "3600")
    assert done.exit_code == 0, done.output
    new = secret_of(done.stdout)
    assert "shown once" in done.stdout and "the old secret works until" in done.stdout
    [now] = stored(gateway_file)
    assert [s.sha256 for s in now.secrets] == [hash_secret(new), hash_secret(old)]
    assert now.secrets[0].valid_until is None and now.secrets[1].valid_until is not None
    done = run(gateway_file, "rotate", record.id)  # no grace: only the newest secret works
    assert done.exit_code == 0 and "no longer works" in done.stdout
    [now] = stored(gateway_file)
    assert [s.sha256 for s in now.secrets] == [hash_secret(secret_of(done.stdout))]


def test_revoke_keeps_the_key(gateway_file: Path) -> None:
    record, _ = created(gateway_file, "bot")
    done = run(gateway_file, "revoke", record.id)
    assert done.exit_code == 0 and record.id in done.stdout
    [now] = stored(gateway_file)
    assert now.revoked and now.name == "bot"


@pytest.mark.parametrize(("args", "said"), [
    (["create", "x", "--rpm", "0"], "--rpm (limits.rpm): must be a whole number"),
    (["create", "x", "--rpm", "many"], "'many' is not a valid integer"),
    (["create", "x", "--budget-usd", "-2"], "--budget-usd (budget.usd)"),
    (["create", "x", "--budget-period", "week"], "'week' is not one of"),
    (["create", "x", "--metadata", "{nope"], "--metadata (metadata): must be JSON"),
    (["create", "x", "--metadata", "[1]"], "--metadata (metadata): must be an object"),
    (["create", "x", "--models", " "], "--models (models[0])"),
    (["create", "x", "--expires-at", "tomorrow"], "--expires-at (expires_at)"),
    (["create", "x", "--default-config", '{"strategy": 1}'], "--default-config (default_config)"),
    (["create"], "Missing argument 'NAME'"),
    (["create", "x", "--colour", "red"], "--colour"),
    (["update", "key_0000", "--rpm", "1"], "no managed key has the id 'key_0000'"),
    (["update", "static:ops", "--rpm", "1"], "static:ops is a static key: static keys are changed in the gateway"),
    (["revoke", "static:ops"], "static keys are changed in the gateway file"),
    (["rotate", "key_0000"], "no managed key"),
    (["rotate", "{id}", "--grace-s", "-1"], "--grace-s (grace_s)"),
    (["update", "{id}", "--models", "a/*", "--all-models"], "give one of them"),
])
def test_bad_options_are_one_line_and_exit_1(gateway_file: Path, args: list[str], said: str) -> None:
    record, _ = created(gateway_file, "bot")
    before = stored(gateway_file)
    done = run(gateway_file, *(arg.replace("{id}", record.id) for arg in args))
    assert done.exit_code == 1, done.output
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("portico: ") and said in done.stderr, done.stderr
    assert stored(gateway_file) == before  # nothing changed


def test_a_bad_gateway_file_or_store_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits]\nmax_body_byte = 5\n")
    done = run(broken, "list")
    assert done.exit_code == 1 and done.stderr.startswith(f"portico: {broken}: limits.max_body_byte")
    assert len(done.stderr.splitlines()) == 1
    away = tmp_path / "away.toml"
    away.write_text(f'[state]\npath = "{tmp_path / "missing-dir" / "state.sqlite"}"\n')
    done = run(away, "create", "bot")
    assert done.exit_code == 1 and done.stderr.startswith("portico: state store ")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.output


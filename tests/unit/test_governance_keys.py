"""A key's fields, its allow-list patterns, and [[keys]] in the gateway file (docs/governance.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.governance import allow
from app.governance.keys import Budget, KeyFieldError, KeyRecord, create, read_fields, rotated
from app.settings import SettingsError, hash_key, load_settings


@pytest.mark.parametrize(("pattern", "provider", "catalog", "model", "expected"), [
    ("openai/gpt-4o*", "openai", None, "gpt-4o-mini", True),
    ("openai/gpt-4o*", "openai", None, "gpt-3.5-turbo", False),
    ("openai/gpt-4o*", "azure-openai", None, "gpt-4o", False),
    ("@prod/*", "cohere", "prod", "command-r", True),
    ("@prod/*", "cohere", "staging", "command-r", False),
    ("*/claude-*", "anthropic", None, "claude-3-5-sonnet", True),
    ("*/claude-*", "bedrock", None, "anthropic.claude-v2", False),
    ("gpt-4o-mini", "openai", "prod", "gpt-4o-mini", True),
    ("gpt-4o-mini", "openai", None, "gpt-4o-mini-2024", False),
    ("openai/*", "openai", None, None, True),  # no model: only a whole-provider pattern passes
    ("openai/gpt-*", "openai", None, None, False),
    ("*", "cohere", None, None, True),
    ("openai/a.b", "openai", None, "aXb", False),  # only * is special
])
def test_allow_list_patterns(pattern, provider, catalog, model, expected) -> None:
    assert allow.allowed([pattern], provider, catalog, model) is expected


def test_an_empty_allow_list_allows_everything() -> None:
    assert allow.allowed([], "openai", None, "anything")


@pytest.mark.parametrize(("fields", "path"), [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "a", "limits": {"rpm": 0}}, "limits.rpm"),
    ({"name": "a", "limits": {"rpm": True}}, "limits.rpm"),
    ({"name": "a", "limits": {"rps": 1}}, "limits.rps"),
    ({"name": "a", "budget": {"usd": -1}}, "budget.usd"),
    ({"name": "a", "budget": {"usd": 1, "period": "week"}}, "budget.period"),
    ({"name": "a", "models": "openai/*"}, "models"),
    ({"name": "a", "models": ["ok", ""]}, "models[1]"),
    ({"name": "a", "metadata": {"x": "y" * 5000}}, "metadata"),
    ({"name": "a", "expires_at": "tomorrow"}, "expires_at"),
    ({"name": "a", "default_config": {"strategy": {"mode": "sideways"}}}, "default_config"),
    ({"name": "a", "secret": "x"}, "secret"),
])
def test_bad_fields_name_their_path(fields, path) -> None:
    with pytest.raises(KeyFieldError) as caught:
        read_fields(fields)
    assert caught.value.path == path


def test_a_created_key_keeps_only_the_hash_and_round_trips() -> None:
    record, secret = create(read_fields({"name": "a", "limits": {"rpm": 5}, "budget": {"usd": 2, "period": "day"},
                                         "expires_at": "2030-01-01T00:00:00Z", "models": ["openai/*"]}))
    assert secret not in repr(record.to_store()) and hash_key(secret) == record.secrets[0].sha256
    assert KeyRecord.from_store(record.to_store()) == record
    assert record.public()["expires_at"] == "2030-01-01T00:00:00Z"
    assert "secrets" not in record.public()


def test_rotation_keeps_the_old_secret_for_its_grace_only() -> None:
    record, old = create({"name": "a"}, now=1000.0)
    turned, new = rotated(record, grace_s=60, now=2000.0)
    by_hash = {s.sha256: s for s in turned.secrets}
    assert by_hash[hash_key(new)].works_at(10**9)
    assert by_hash[hash_key(old)].works_at(2059.0) and not by_hash[hash_key(old)].works_at(2060.0)
    assert hash_key(old) not in {s.sha256 for s in rotated(record, grace_s=0, now=2000.0)[0].secrets}


def test_budget_periods_are_utc_calendar_periods() -> None:
    moment = datetime(2026, 12, 3, tzinfo=UTC).timestamp()
    assert Budget(1, "day").period_of(moment) == "2026-12-03"
    assert Budget(1, "day").period_of(moment - 1) == "2026-12-02"
    assert Budget(1, "month").period_of(moment) == "2026-12"
    assert Budget(1, "total").period_of(moment) == "total"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_static_keys_take_the_governance_fields(tmp_path: Path) -> None:
    settings = load_settings({}, write(tmp_path, '''
[[keys]]
name = "team"
key = "pk-1"
models = ["openai/*"]
limits = { rpm = 10, max_concurrent = 2 }
budget = { usd = 5, period = "day" }
expires_at = 2030-01-01T00:00:00Z
default_config = "pc-a"
[configs.pc-a]
provider = "openai"
'''))
    fields = settings.keys[0].fields
    assert fields["limits"].rpm == 10 and fields["budget"] == Budget(5.0, "day") and fields["models"] == ("openai/*",)
    assert fields["expires_at"] == 1893456000.0


@pytest.mark.parametrize(("text", "expected"), [
    ('[[keys]]\nname = "a"\nkey = "k"\nlimits = { rpm = -1 }\n', "keys[0].limits.rpm: must be a whole number"),
    ('[[keys]]\nname = "a"\nkey = "k"\nbudget = { usd = 1, period = "week" }\n', "keys[0].budget.period"),
    ('[[keys]]\nname = "a"\nkey = "k"\n[[keys]]\nname = "a"\nkey = "j"\n', "two keys are named 'a'"),
    ('[[keys]]\nname = "a"\nkey = "k"\ndefault_config = "nope"\n', "keys[0].default_config: no saved config"),
    ('[[keys]]\nname = "a"\nkey = "k"\nrpm = 5\n', "keys[0].rpm: unknown key"),
    ('[state]\nbackend = "postgres://x"\n', "state.backend: must be \"sqlite\" or a redis:// URL"),
])
def test_bad_keys_in_the_file_stop_start_up_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({}, write(tmp_path, text))
    assert expected in str(caught.value)

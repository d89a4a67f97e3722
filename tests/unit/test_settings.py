"""The gateway file and environment: values, env: indirection, one-line errors, the key CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from app.settings import SettingsError, bind_is_loopback, check_start, hash_key, load_settings

FULL = """
[[keys]]
name = "team-a"
sha256 = "KEY_A_HASH"

[[keys]]
name = "team-b"
key = "env:TEAM_B_KEY"

[custom_hosts]
allow = ["127.0.0.1", "*.svc.cluster.local"]

[catalog.cohere-prod]
provider = "cohere"
api_key = "env:COHERE_API_KEY"
custom_host = "https://cohere.internal.example/v1"

[catalog.azure-prod]
provider = "azure-openai"
api_key = "azure-secret"
resource_name = "res"
deployment_id = "dep"
api_version = "2024-06-01"

[configs.pc-support]
strategy = { mode = "fallback" }
targets = [ { provider = "@cohere-prod" } ]

[limits]
max_body_bytes = 2048

[retry]
backoff_base_ms = 0
""".replace("KEY_A_HASH", hash_key("key-a"))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_full_gateway_file(tmp_path: Path) -> None:
    env = {"TEAM_B_KEY": "key-b", "COHERE_API_KEY": "co-secret", "GATEWAY_WORKERS": "3"}
    settings = load_settings(env, write(tmp_path, FULL))
    assert [k.name for k in settings.keys] == ["team-a", "team-b"]
    assert settings.keys[1].sha256 == hash_key("key-b")
    assert settings.catalog["cohere-prod"].api_key == "co-secret"
    assert settings.catalog["azure-prod"].options == {"resource_name": "res", "deployment_id": "dep",
                                                      "api_version": "2024-06-01"}
    assert settings.configs["pc-support"].strategy.mode == "fallback"
    assert settings.configs["pc-support"].targets[0].provider == "@cohere-prod"
    assert settings.max_body_bytes == 2048 and settings.backoff_base_ms == 0 and settings.workers == 3
    assert "co-secret" not in repr(settings.catalog["cohere-prod"])


@pytest.mark.parametrize("text, fragment", [
    ("[[keys]]\nname = 'a'\n", "keys[0]: give exactly one of sha256 or key"),
    ("[[keys]]\nname = 'a'\nsha256 = 'abc'\n", "keys[0].sha256: must be 64 hex"),
    ("[[keys]]\nname = 'a'\nkey = 'env:NOPE_NOT_SET'\n", "keys[0].key: environment variable NOPE_NOT_SET is not set"),
    ("[catalog.x]\napi_key = 'k'\n", "catalog.x: provider is required"),
    ("[catalog.x]\nprovider = 'openai'\ncolour = 'red'\n", "catalog.x.colour: unknown key"),
    ("[catalog.x]\nprovider = 'openia'\n", "catalog.x.provider: unknown provider 'openia'"),
    ("[custom_hosts]\nallow = '127.0.0.1'\n", "custom_hosts.allow: must be a list"),
    ("[limits]\nmax_body_bytes = -1\n", "limits.max_body_bytes: must be a non-negative integer"),
    ("keys = [", "not valid TOML"),
])
def test_bad_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings({}, path)
    message = str(err.value)
    assert message.startswith(path) and fragment in message and "\n" not in message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="file not found"):
        load_settings({"GATEWAY_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize("bind, loopback", [
    ("127.0.0.1:8787", True), ("localhost:1", True), ("[::1]:8787", True), ("unix:/tmp/s", True),
    ("0.0.0.0:8787", False), ("10.0.0.1:80", False), ("[::]:80", False), ("example.com:80", False),
])
def test_bind_is_loopback(bind: str, loopback: bool) -> None:
    assert bind_is_loopback(bind) is loopback


def test_open_mode_only_on_loopback() -> None:
    assert "OPEN" in (check_start(load_settings({"GATEWAY_BIND": "127.0.0.1:1"}, path=None)) or "")
    with pytest.raises(SettingsError, match="refusing to start"):
        check_start(load_settings({"GATEWAY_BIND": "0.0.0.0:1"}))


def test_keys_close_open_mode(tmp_path: Path) -> None:
    settings = load_settings({"GATEWAY_BIND": "0.0.0.0:1"}, write(tmp_path, FULL.replace("env:TEAM_B_KEY", "k")
                                                                   .replace("env:COHERE_API_KEY", "c")))
    assert check_start(settings) is None


def test_bad_environment_values() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_WORKERS"):
        load_settings({"GATEWAY_WORKERS": "many"})
    with pytest.raises(SettingsError, match="GATEWAY_LOG_LEVEL"):
        load_settings({"GATEWAY_LOG_LEVEL": "loud"})


def test_create_key_prints_a_key_and_its_hash(tmp_path: Path) -> None:
    runner = create_app(load_settings({}, write(tmp_path, "[logs]\npath = \"\"\n"))).test_cli_runner()
    result = runner.invoke(args=["create-key", 'team "x"'])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    key = next(line.split(": ", 1)[1] for line in lines if line.startswith("# x-portkey-api-key: "))
    toml = "\n".join(line for line in lines if not line.startswith("#"))
    settings = load_settings({}, write(tmp_path, toml))
    assert settings.keys[0].name == 'team "x"'
    assert settings.keys[0].sha256 == hash_key(key)


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    settings = load_settings({}, write(tmp_path, "[metrics]\nenabled = false\n[logs]\npath = \"\"\n"))
    assert settings.metrics_enabled is False and settings.logs_path is None
    client = create_app(settings).test_client()
    assert client.get("/metrics").status_code == 404

"""A strict gateway file: unknown keys anywhere, values checked at start-up, check-config, create-key, binding."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from app.settings import FILE_SECTIONS, SettingsError, hash_key, load_settings
from tests.conftest import GATEWAY_KEY

ROOT = Path(__file__).resolve().parents[2]
KEYS = f'[[keys]]\nname = "t"\nsha256 = "{hash_key(GATEWAY_KEY)}"\n'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def refusal(tmp_path: Path, text: str) -> str:
    """Return the one-line message that load_settings refuses the file with."""
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(path) + 2:]


@pytest.mark.parametrize("text, expected", [
    ('[[key]]\nname = "a"\nkey = "k"\n', "key: unknown section; did you mean `keys`?"),
    ('[admn]\nkey = "k"\n', "admn: unknown section; did you mean `admin`?"),
    ('[catalgo.x]\nprovider = "openai"\n', "catalgo: unknown section; did you mean `catalog`?"),
    ("[limits]\nmax_body_byte = 5\n", "limits.max_body_byte: unknown key; did you mean `max_body_bytes`?"),
    ("[metrics]\nenabld = false\n", "metrics.enabld: unknown key; did you mean `enabled`?"),
    ("[logs]\nretention_day = 3\n", "logs.retention_day: unknown key; did you mean `retention_days`?"),
    ('[[keys]]\nname = "a"\nkey = "k"\n[[keys]]\nname = "b"\nsha265 = "x"\n',
     "keys[1].sha265: unknown key; did you mean `sha256`?"),
    ('[catalog.x]\nprovider = "openai"\napi_kye = "k"\n', "catalog.x.api_kye: unknown key; did you mean `api_key`?"),
    ('[configs.pc-x]\nstrategy = { mode = "fallback" }\ntargets = [{ provdier = "openai" }]\n',
     "configs.pc-x.targets[0].provdier: unknown key; did you mean `provider`?"),
    ('[configs.pc-x]\nprovider = "openai"\nretry = { atempts = 2 }\n',
     "configs.pc-x.retry.atempts: unknown key; did you mean `attempts`?"),
    ('[pricing."openai/gpt-x"]\ninptu = 1.0\n', 'pricing."openai/gpt-x".inptu: unknown key; did you mean `input`?'),
    ("max_body_bytes = 5\n", "max_body_bytes: unknown key; did you mean `[limits] max_body_bytes`?"),
])
def test_an_unknown_section_or_key_anywhere_stops_start_up(tmp_path: Path, text: str, expected: str) -> None:
    assert refusal(tmp_path, text) == expected


def test_an_unknown_key_far_from_any_known_one_lists_the_known_ones(tmp_path: Path) -> None:
    assert refusal(tmp_path, "[retry]\ncolour = 1\n") == "retry.colour: unknown key; known: backoff_base_ms"


def test_every_known_key_is_accepted_and_documented(tmp_path: Path) -> None:
    text = KEYS + """expires_at = "2099-01-01T00:00:00Z"
revoked = false
metadata = { team = "a" }
models = ["openai/*"]
default_config = "pc-a"
limits = { rpm = 10 }
budget = { usd = 5, period = "month" }
[custom_hosts]
allow = ["127.0.0.1"]
[catalog.all]
provider = "azure-openai"
api_key = "k"
custom_host = "https://example.com/v1"
resource_name = "res"
deployment_id = "dep"
api_version = "2024-06-01"
aws_region = "us-east-1"
aws_access_key_id = "AKID"
aws_secret_access_key = "s"
aws_session_token = "t"
vertex_project_id = "my-project-123"
vertex_region = "us-central1"
openai_organization = "o"
openai_project = "p"
anthropic_version = "2023-06-01"
anthropic_beta = "b"
models = ["gpt-4o"]
[configs.pc-a]
provider = "openai"
[limits]
max_body_bytes = 1000
spool_memory_bytes = 100
[retry]
backoff_base_ms = 0
[upstream]
connect_timeout_ms = 1000
read_timeout_ms = 1000
trust_env = false
[proxy]
ignore_headers = ["x-a"]
trusted_proxies = ["127.0.0.1"]
[logs]
access_log = true
path = ""
retention_days = 1
[metrics]
enabled = true
[admin]
key = "admin-key"
[pricing."openai/gpt-x"]
input = 1.0
[cache]
backend = "memory"
max_bytes = 1000
max_entry_bytes = 100
[state]
backend = "sqlite"
path = "state.sqlite"
"""
    for keys in FILE_SECTIONS.values():  # the file above sets every key of the table: none may be refused
        assert all(re.search(rf"^{key} = ", text, re.M) for key in keys)
    settings = load_settings({}, write(tmp_path, text))
    assert settings.catalog["all"].options["anthropic_beta"] == "b" and settings.logs_retention_days == 1
    docs = (ROOT / "docs" / "gateway-file.md").read_text()
    rows = [line for line in docs.splitlines() if line.startswith("| `[")]
    for section, keys in FILE_SECTIONS.items():
        own = [row for row in rows if re.match(rf"\| `\[+\"?{section}\b", row)]
        assert own, f"[{section}] has no row in docs/gateway-file.md"
        for key in keys:
            assert any(re.search(rf"\b{key}\b", row) for row in own), f"{section}.{key} is not documented"


@pytest.mark.parametrize("text, expected", [
    ('[catalog.x]\nprovider = "openai"\ncustom_host = "ftp://x"\n',
     "catalog.x.custom_host: custom host scheme must be http or https"),
    ('[catalog.x]\nprovider = "openai"\ncustom_host = "http://10.0.0.5/v1"\n',
     "catalog.x.custom_host: custom host 'http://10.0.0.5/v1' resolves to 10.0.0.5, a private address"),
    ('[configs.pc-x]\nstrategy = { mode = "fallback" }\n'
     'targets = [{ provider = "openai" }, { provider = "openai", custom_host = "https://h:99999" }]\n',
     "configs.pc-x.targets[1].custom_host: custom host port must be a number from 1 to 65535"),
    ("[logs]\nretention_days = 0\n", "logs.retention_days: must be at least 1, got 0"),
    ('[catalog.x]\nprovider = "openai"\napi_key = "sk-\\u0001x"\n',
     "catalog.x.api_key: contains a control character (U+0001)"),
    ('[catalog.x]\nprovider = "openai"\nopenai_organization = "org\\nX-Evil: 1"\n',
     "catalog.x.openai_organization: contains a control character (U+000A)"),
    ('[custom_hosts]\nallow = ["10.1.2.3/8"]\n', "custom_hosts.allow: invalid custom_hosts.allow entry '10.1.2.3/8'"),
    ('[cache]\nbackend = "redis://h:port"\n', "cache.backend: not a usable Redis URL"),
])
def test_values_every_call_would_refuse_stop_start_up(tmp_path: Path, text: str, expected: str) -> None:
    assert refusal(tmp_path, text).startswith(expected)


def test_custom_hosts_are_checked_against_the_allow_list_but_not_looked_up(tmp_path: Path) -> None:
    entries = """
[catalog.private]
provider = "openai"
custom_host = "http://10.0.0.5/v1"
[catalog.later]
provider = "openai"
custom_host = "https://not-resolvable-at-start.invalid/v1"
"""
    assert "catalog.private.custom_host" in refusal(tmp_path, entries)
    settings = load_settings({}, write(tmp_path, '[custom_hosts]\nallow = ["10.0.0.0/8"]\n' + entries))
    assert set(settings.catalog) == {"private", "later"}


def test_a_bind_without_a_port_gets_8787() -> None:
    binds = ["127.0.0.1", "[::1]", "::1", "localhost", "0.0.0.0:9000", "[::]:9000", "unix:/run/portico.sock", ""]
    assert {bind: load_settings({"GATEWAY_BIND": bind}).bind for bind in binds} == {
        "127.0.0.1": "127.0.0.1:8787", "[::1]": "[::1]:8787", "::1": "[::1]:8787", "localhost": "localhost:8787",
        "0.0.0.0:9000": "0.0.0.0:9000", "[::]:9000": "[::]:9000", "unix:/run/portico.sock": "unix:/run/portico.sock",
        "": "127.0.0.1:8787"}


def test_an_unknown_saved_config_id_says_so_and_lists_nothing_secret(tmp_path: Path) -> None:
    text = KEYS + '[logs]\npath = ""\n[configs.pc-secret-name]\nprovider = "openai"\napi_key = "sk-saved-secret"\n'
    client = create_app(load_settings({}, write(tmp_path, text))).test_client()
    res = client.post("/v1/chat/completions", json={"model": "m", "messages": []},
                      headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": "pc-nope"})
    assert res.status_code == 400
    body = res.get_data(as_text=True)
    assert "no saved config with the id 'pc-nope'" in res.get_json()["message"]
    assert "pc-secret-name" not in body and "sk-saved-secret" not in body


def flask_cli(tmp_path: Path, *args: str, config: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `flask --app app.wsgi ARGS` as an operator would, with GATEWAY_CONFIG set to config."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    if config is not None:
        env["GATEWAY_CONFIG"] = config
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app.wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


def test_check_config_exits_0_or_1_with_the_start_up_line(tmp_path: Path) -> None:
    bad = write(tmp_path, '[limits]\nmax_body_byte = 5\n')
    done = flask_cli(tmp_path, "check-config", bad)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"portico: {bad}: limits.max_body_byte: unknown key; "
                                   "did you mean `max_body_bytes`?")
    good = tmp_path / "good.toml"
    good.write_text(KEYS + "[limits]\nmax_body_bytes = 5\n")
    done = flask_cli(tmp_path, "check-config", config=str(good))  # no PATH: GATEWAY_CONFIG, as start-up reads
    assert (done.returncode, done.stdout.strip()) == (0, f"ok: {good}")


def test_create_key_works_with_a_broken_gateway_file(tmp_path: Path) -> None:
    done = flask_cli(tmp_path, "create-key", "team-a", config=write(tmp_path, "[[key]]\nname = 'a'\n"))
    assert done.returncode == 0, done.stderr
    key = re.search(r"# x-portkey-api-key: (\S+)", done.stdout)
    assert key and f'sha256 = "{hash_key(key.group(1))}"' in done.stdout
    assert "Traceback" not in done.stderr

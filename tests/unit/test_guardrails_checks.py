"""Tests for each built-in guardrail check: pass, fail, `not`, and bad parameters (run time and validation)."""

from __future__ import annotations

from typing import Any

import pytest

from app.guardrails import HookContext, run_hooks, validate_hooks
from app.guardrails import checks as checks_module
from app.guardrails.checks import CHECKS, canonical_language, count_sentences, find_urls, json_values, url_host

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    """Return a chat request whose last user message is `text`."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "be brief"},
                                                 {"role": "user", "content": text}], **extra}


def run_check(check_id: str, params: Any, *, text: str = "", event: str = "before", endpoint: str = "chatComplete",
              request: Any = None, response: Any = None, metadata: dict[str, Any] | None = None,
              hook: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one check in one hook and return its hook_results check entry."""
    if request is None:
        request = chat(text)
    if event == "after" and response is None:
        response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    hooks = [{"id": "h", "type": "guardrail", **(hook or {}),
              "checks": [{"id": f"default.{check_id}", "parameters": params}]}]
    run = run_hooks(hooks, HookContext(event, endpoint, request, response, metadata or {}))
    return run.results[0]["checks"][0]


# --- pass / fail, and `not` inverts ------------------------------------------------------------

TEXT_CASES = [
    ("regexMatch", {"rule": r"\d{3}"}, "call 555 now", True),
    ("regexMatch", {"rule": r"\d{3}"}, "no digits here", False),
    ("regexMatch", {"rule": r"(?<area>\d{3})-\d{3}"}, "555-555", True),  # JavaScript named groups
    ("sentenceCount", {"minSentences": 2, "maxSentences": 3}, "One. Two! Three?", True),
    ("sentenceCount", {"minSentences": 2}, "Just one sentence without a stop", False),
    ("wordCount", {"minWords": 2, "maxWords": 4}, "three little words", True),
    ("wordCount", {"maxWords": 2}, "three little words", False),
    ("characterCount", {"minCharacters": 3, "maxCharacters": 5}, "abcd", True),
    ("characterCount", {"maxCharacters": 3}, "abcd", False),
    ("jsonSchema", {"schema": SCHEMA}, '{"name": "x"}', True),
    ("jsonSchema", {"schema": SCHEMA}, 'Here it is:\n```json\n{"name": "x"}\n```\nDone.', True),
    ("jsonSchema", {"schema": SCHEMA}, 'The answer is {"name": "x"} as asked.', True),
    ("jsonSchema", {"schema": SCHEMA}, '{"name": 3}', False),
    ("jsonSchema", {"schema": SCHEMA}, "no JSON at all", False),
    ("jsonKeys", {"keys": ["a", "b"], "operator": "all"}, '{"a": 1, "b": 2}', True),
    ("jsonKeys", {"keys": ["a", "b"], "operator": "all"}, '{"a": 1}', False),
    ("jsonKeys", {"keys": ["a"], "operator": "none"}, '{"b": 1}', True),
    ("jsonKeys", {"keys": ["a", "z"]}, 'prose {"z": 1} prose', True),
    ("jsonKeys", {"keys": ["a"]}, "[1, 2]", False),
    ("contains", {"words": ["foo", "bar"], "operator": "any"}, "a foo here", True),
    ("contains", {"words": ["foo", "bar"], "operator": "all"}, "a foo here", False),
    ("contains", {"words": ["foo"], "operator": "none"}, "a bar here", True),
    ("contains", {"words": ["Foo"]}, "a foo here", False),  # case-sensitive, as Portkey's
    ("validUrls", {}, "see https://example.com/a?b=1 and (http://docs.python.org/3/).", True),
    ("validUrls", {}, "see https://exa_mple..com/ now", False),
    ("validUrls", {}, "no links in here", False),
    ("containsCode", {"format": "Python"}, "Try:\n```py\nprint(1)\n```", True),
    ("containsCode", {"format": "c++"}, "```cpp\nint main() {}\n```", True),
    ("containsCode", {"format": "SQL"}, "```python\nprint(1)\n```", False),
    ("containsCode", {"format": "Python"}, "print(1) without a fence", False),
    ("alluppercase", {}, "HELLO, WORLD 42", True),
    ("alluppercase", {}, "Hello", False),
    ("alllowercase", {}, "hello 42 ü", True),
    ("alllowercase", {}, "hello World", False),
    ("endsWith", {"suffix": "Thanks"}, "Bye. Thanks.\n", True),
    ("endsWith", {"suffix": "Thanks"}, "Thanks, bye", False),
    ("notNull", {}, "x", True),
    ("notNull", {}, "   ", False),
]


@pytest.mark.parametrize(("check_id", "params", "text", "expected"), TEXT_CASES)
def test_text_checks(check_id: str, params: dict[str, Any], text: str, expected: bool) -> None:
    entry = run_check(check_id, params, text=text)
    assert "error" not in entry, entry
    assert entry["verdict"] is expected, entry
    assert entry["data"]["not"] is False


@pytest.mark.parametrize(("check_id", "params", "text", "expected"), TEXT_CASES)
def test_not_inverts_text_checks(check_id: str, params: dict[str, Any], text: str, expected: bool) -> None:
    entry = run_check(check_id, {**params, "not": True}, text=text)
    assert entry["verdict"] is (not expected), entry
    assert entry["data"]["not"] is True


@pytest.mark.parametrize(("check_id", "params", "text", "expected"), TEXT_CASES)
def test_text_checks_read_the_answer_after_the_request(check_id: str, params: dict[str, Any], text: str,
                                                       expected: bool) -> None:
    entry = run_check(check_id, params, text=text, event="after", request=chat("unrelated request text"))
    assert entry["verdict"] is expected, entry


REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("modelWhitelist", {"models": ["gpt-4o-mini", "gpt-4o"]}, {}, True),
    ("modelWhitelist", {"models": ["gpt-4o"]}, {}, False),
    ("modelRules", {"rules": {"defaults": ["gpt-4o-mini"], "metadata": {"tier": {"pro": ["gpt-4o"]}}}}, {}, True),
    ("modelRules", {"rules": {"defaults": ["gpt-4o-mini"], "metadata": {"tier": {"pro": ["gpt-4o"]}}}},
     {"tier": "pro"}, False),
    ("modelRules", {"rules": {"tier": {"free": ["gpt-4o-mini"]}}}, {"tier": "free"}, True),
    ("modelRules", {"rules": {"tier": {"free": ["gpt-4o-mini"]}}}, {"tier": "gold"}, False),
    ("modelRules", {"rules": {"beta": {"true": ["gpt-4o-mini"]}}}, {"beta": True}, True),
    ("requiredMetadataKeys", {"metadataKeys": ["user", "team"]}, {"user": "u", "team": "t"}, True),
    ("requiredMetadataKeys", {"metadataKeys": ["user", "team"]}, {"user": "u"}, False),
    ("requiredMetadataKeys", {"metadataKeys": ["user", "team"], "operator": "any"}, {"user": "u"}, True),
    ("requiredMetadataKeys", {"metadataKeys": ["debug"], "operator": "none"}, {"debug": 1}, False),
    ("allowedRequestTypes", {"allowedTypes": ["chatComplete", "messages"]}, {}, True),
    ("allowedRequestTypes", {"allowedTypes": "complete, embed"}, {}, False),
    ("allowedRequestTypes", {"blockedTypes": ["chatComplete"]}, {}, False),
    ("allowedRequestTypes", {"blockedTypes": ["embed"]}, {}, True),
    ("allowedRequestTypes", {}, {}, True),
]


@pytest.mark.parametrize(("check_id", "params", "metadata", "expected"), REQUEST_CASES)
def test_request_checks(check_id: str, params: dict[str, Any], metadata: dict[str, Any], expected: bool) -> None:
    entry = run_check(check_id, params, text="hello", metadata=metadata)
    assert "error" not in entry, entry
    assert entry["verdict"] is expected, entry
    inverted = run_check(check_id, {**params, "not": True}, text="hello", metadata=metadata)
    assert inverted["verdict"] is (not expected)


def test_model_checks_error_without_a_model() -> None:
    entry = run_check("modelWhitelist", {"models": ["gpt-4o"]}, request={"messages": []})
    assert entry["verdict"] is False and entry["error"] == "the request names no model"


def test_allowed_request_types_streamed_variant() -> None:
    blocked = {"blockedTypes": ["stream-chatComplete"]}
    assert run_check("allowedRequestTypes", blocked, request=chat("hi", stream=True))["verdict"] is False
    assert run_check("allowedRequestTypes", blocked, text="hi")["verdict"] is True
    assert run_check("allowedRequestTypes", {"allowedTypes": ["embed"]}, endpoint="embed",
                     request={"input": "x"})["verdict"] is True


def test_not_null_on_an_answer_without_text() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]}}]}
    assert run_check("notNull", {}, event="after", response=answer)["verdict"] is False


# --- details ---------------------------------------------------------------------------------

def test_regex_match_caps_the_text() -> None:
    text = "a" * (checks_module.MAX_REGEX_TEXT + 10) + "needle"
    entry = run_check("regexMatch", {"rule": "needle"}, text=text)
    assert entry["verdict"] is False and entry["data"]["truncated"] is True


def test_sentence_and_url_helpers() -> None:
    assert count_sentences("") == 0
    assert count_sentences("Hello") == 1
    assert count_sentences("Wait... what?! Yes.") == 3
    assert count_sentences("Version 3.11 is out. Nice") == 2
    assert find_urls("[docs](https://a.example/x_(y)). And https://b.example, ok") == [
        "https://a.example/x_(y)", "https://b.example"]
    assert url_host("https://bücher.de/x") == "xn--bcher-kva.de"
    assert url_host("http://127.0.0.1:8080/") == "127.0.0.1"
    assert url_host("https://localhost/") == "localhost"
    assert url_host("https://example.com:99999/") is None
    assert url_host("https://nodots/") is None
    assert url_host("https://-bad-.com/") is None


def test_json_values_sources() -> None:
    assert json_values('  {"a": 1}  ') == [{"a": 1}]
    assert json_values("```\n[1, 2]\n```") == [[1, 2]]
    assert json_values("```python\n{\"a\": 1}\n```") == [{"a": 1}]  # not a JSON fence: found in the prose
    assert json_values("nothing") == []


def test_json_schema_never_fetches_a_remote_ref() -> None:
    schema = {"$ref": "http://127.0.0.1:9/schema.json"}
    entry = run_check("jsonSchema", {"schema": schema}, text='{"a": 1}')
    assert entry["verdict"] is False and "cannot be resolved" in entry["error"]


def test_json_schema_reports_validation_errors() -> None:
    entry = run_check("jsonSchema", {"schema": SCHEMA}, text='{"name": 3}')
    assert entry["data"]["validationErrors"] == [{"path": "/name", "message": "3 is not of type 'string'"}]


def test_contains_code_aliases() -> None:
    assert canonical_language("Python") == canonical_language("py3") == "python"
    assert canonical_language("C#") == canonical_language("csharp") == "c#"
    assert canonical_language("Shell") == canonical_language("bash") == "shell"
    entry = run_check("containsCode", {"format": "JavaScript"}, text="~~~js\nx()\n~~~\n```SQL\nselect 1\n```")
    assert entry["verdict"] is True and entry["data"]["foundFormats"] == ["javascript", "sql"]


def test_valid_urls_does_not_resolve_without_only_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError("resolved a name without onlyDNS")
    monkeypatch.setattr(checks_module.socket, "getaddrinfo", refuse)
    assert run_check("validUrls", {}, text="https://does-not-exist.example/")["verdict"] is True


def test_valid_urls_only_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_getaddrinfo(host: str, *args: Any) -> list[Any]:
        calls.append(host)
        if host == "good.example":
            return [(2, 1, 6, "", ("93.184.216.34", 0))]
        raise OSError("no such host")
    monkeypatch.setattr(checks_module.socket, "getaddrinfo", fake_getaddrinfo)
    good = run_check("validUrls", {"onlyDNS": True}, text="https://good.example/a https://good.example/b")
    assert good["verdict"] is True and calls == ["good.example"]
    bad = run_check("validUrls", {"onlyDNS": True}, text="https://good.example/ https://gone.example/")
    assert bad["verdict"] is False and bad["data"]["invalidUrls"] == ["https://gone.example/"]


def test_valid_urls_dns_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    release = threading.Event()

    def hang(host: str, *args: Any) -> list[Any]:
        release.wait(5)
        return [(2, 1, 6, "", ("93.184.216.34", 0))]
    monkeypatch.setattr(checks_module.socket, "getaddrinfo", hang)
    monkeypatch.setattr(checks_module, "DNS_TIMEOUT_S", 0.05)
    try:
        entry = run_check("validUrls", {"onlyDNS": True}, text="https://slow.example/")
    finally:
        release.set()
    assert entry["verdict"] is False


# --- bad parameters: an errored check at run time, a problem for validate_hooks ------------------

JWT = {"jwksUri": "https://idp.example/jwks", "headerKey": "Authorization"}
BAD_PARAMS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("regexMatch", {}, ("rule",)),
    ("regexMatch", {"rule": "("}, ("rule",)),
    ("regexMatch", {"rule": "a" * 1001}, ("rule",)),
    ("sentenceCount", {"minSentences": -1}, ("minSentences",)),
    ("sentenceCount", {"minSentences": 5, "maxSentences": 2}, ("maxSentences",)),
    ("wordCount", {"maxWords": "10"}, ("maxWords",)),
    ("characterCount", {"minCharacters": True}, ("minCharacters",)),
    ("jsonSchema", {}, ("schema",)),
    ("jsonSchema", {"schema": {"type": "nonsense"}}, ("schema",)),
    ("jsonKeys", {"keys": []}, ("keys",)),
    ("jsonKeys", {"keys": ["a"], "operator": "some"}, ("operator",)),
    ("contains", {"words": "foo"}, ("words",)),
    ("validUrls", {"onlyDNS": "yes"}, ("onlyDNS",)),
    ("containsCode", {}, ("format",)),
    ("alluppercase", {"not": "true"}, ("not",)),
    ("alllowercase", {"extra": 1}, ("extra",)),
    ("endsWith", {"suffix": ""}, ("suffix",)),
    ("notNull", {"fail_on_error": 1}, ("fail_on_error",)),
    ("modelWhitelist", {"models": [1]}, ("models",)),
    ("modelRules", {"rules": {"tier": ["gpt-4o"]}}, ("rules",)),
    ("modelRules", {}, ("rules",)),
    ("requiredMetadataKeys", {}, ("metadataKeys",)),
    ("requiredMetadataKeys", {"metadataKeys": ["a"], "operator": "most"}, ("operator",)),
    ("allowedRequestTypes", {"allowedTypes": ["chat"]}, ("allowedTypes",)),
    ("allowedRequestTypes", {"allowedTypes": ["embed"], "blockedTypes": "embed"}, ("blockedTypes",)),
    ("jwt", {"jwksUri": "https://idp.example/jwks"}, ("headerKey",)),
    ("jwt", {**JWT, "jwksUri": "file:///etc/passwd"}, ("jwksUri",)),
    ("jwt", {**JWT, "maxTokenAge": "soon"}, ("maxTokenAge",)),
    ("jwt", {**JWT, "not": True}, ("not",)),
    ("webhook", {}, ("webhookURL",)),
    ("webhook", {"webhookURL": "https://hooks.example/x", "timeout": 0}, ("timeout",)),
    ("webhook", {"webhookURL": "https://hooks.example/x", "headers": {"a": "b\r\nc: d"}}, ("headers",)),
    ("webhook", {"webhookURL": "https://hooks.example/x", "headers": {"Content-Length": "5"}}, ("headers",)),
    ("webhook", {"webhookURL": "https://hooks.example/x", "headers": "[1]"}, ("headers",)),
    ("addPrefix", {}, ("prefix",)),
    ("addPrefix", {"prefix": "x", "applyToRole": "tool"}, ("applyToRole",)),
    ("regexReplace", {"rule": "a*"}, ("rule",)),
    ("regexReplace", {"rule": "a", "redactText": 5}, ("redactText",)),
    ("regexReplace", {"rule": "a", "not": True}, ("not",)),
    ("regexMatch", ["rule"], ()),
]


@pytest.mark.parametrize(("check_id", "params", "path"), BAD_PARAMS)
def test_bad_parameters_error_at_run_time(check_id: str, params: Any, path: tuple[str, ...]) -> None:
    entry = run_check(check_id, params, text="some text")
    assert entry["verdict"] is False
    assert entry["error"].startswith("invalid parameters: ") or entry["error"] == "parameters must be an object"


@pytest.mark.parametrize(("check_id", "params", "path"), BAD_PARAMS)
def test_bad_parameters_are_reported_by_validate_hooks(check_id: str, params: Any, path: tuple[str, ...]) -> None:
    full = validate_hooks([{"id": "h", "checks": [{"id": f"default.{check_id}", "parameters": params}]}])
    assert (0, "checks", 0, "parameters", *path) in [found for found, _ in full], full
    if isinstance(params, dict):
        short = validate_hooks([{check_id: params}])
        assert (0, check_id, *path) in [found for found, _ in short], short


def test_every_check_of_the_spec_is_registered() -> None:
    names = {"regexMatch", "sentenceCount", "wordCount", "characterCount", "jsonSchema", "jsonKeys", "contains",
             "validUrls", "containsCode", "alluppercase", "alllowercase", "endsWith", "modelWhitelist", "modelRules",
             "requiredMetadataKeys", "allowedRequestTypes", "notNull", "webhook", "jwt", "addPrefix", "regexReplace"}
    assert set(CHECKS) == {f"default.{name}" for name in names}


def test_null_parameters_count_as_absent() -> None:
    assert run_check("wordCount", {"minWords": None, "maxWords": 5}, text="a b")["verdict"] is True
    assert validate_hooks([{"wordCount": {"minWords": None}}]) == []

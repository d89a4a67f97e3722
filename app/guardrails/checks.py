"""The built-in `default.*` checks (docs/guardrails.md) and the registry the runner and the validation use.

Each check is a small function of the check input and its resolved parameters that returns
(verdict, data): the verdict says whether the condition holds (the runner applies `not`), data gives
the details shown in hook_results. Mutators live in `mutators`, the checks that call out in `remote`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Iterator, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import jsonschema.validators
import referencing
import referencing.exceptions

from app.guardrails import mutators, remote
from app.guardrails.context import CheckError, CheckInput
from app.guardrails.params import (
    OPERATORS,
    CheckSpec,
    Param,
    Problem,
    compile_rule,
    count,
    flag,
    one_of,
    range_of,
    request_types,
    rule,
    rules_parts,
    schema,
    text,
    texts,
    type_names,
)
from app.guardrails.params import model_rules as rules_shape
from app.guardrails.pool import dns_pool

Result = tuple[bool, dict[str, Any]]

# Rules run in linear time (app.textmatch); bounding the text still bounds the cost of one search.
MAX_REGEX_TEXT = 1024 * 1024
DNS_TIMEOUT_S = 2.0
MAX_DNS_HOSTS = 20
_MAX_SHOWN = 200
_JSON_SCAN_STARTS = 16

# A run of . ! ? is tried once, from its start and without backtracking: `[.!?]+(?=\s|$)` alone is
# quadratic on a long run not followed by a space (30,000 dots took 16 s; docs/security.md).
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++(?=\s|$)")
_URL = re.compile(r"https?://[^\s<>\"'`{}\[\]|\\^]+", re.IGNORECASE)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_TOP_LABEL = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")
_FENCE_TAG = re.compile(r"^[ \t]*(?:```|~~~)[ \t]*([A-Za-z0-9_#+.\-]+)", re.MULTILINE)
_JSON_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_LANGUAGE_ALIASES = {
    "python": ("py", "py3", "python3", "gyp"),
    "javascript": ("js", "jsx", "mjs", "cjs", "node"),
    "typescript": ("ts", "tsx"),
    "shell": ("sh", "bash", "zsh", "ksh", "console", "shellscript", "shell-session"),
    "c#": ("cs", "csharp"),
    "c++": ("cpp", "cxx", "cc", "hpp"),
    "go": ("golang",),
    "rust": ("rs",),
    "ruby": ("rb",),
    "kotlin": ("kt", "kts"),
    "yaml": ("yml",),
    "markdown": ("md",),
    "dockerfile": ("docker",),
    "perl": ("pl",),
    "sql": ("mysql", "postgresql", "postgres", "psql", "sqlite", "tsql", "plsql"),
    "html": ("htm", "xhtml"),
    "json": ("jsonc", "json5"),
}
_CANONICAL_LANGUAGE = {alias: name for name, aliases in _LANGUAGE_ALIASES.items() for alias in aliases}


# --- text checks -------------------------------------------------------------------------------

def regex_match(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the text matches `rule` (the first MAX_REGEX_TEXT characters are searched)."""
    text_ = inp.text
    match = compile_rule(params["rule"]).first_match(text_[:MAX_REGEX_TEXT])
    data: dict[str, Any] = {"explanation": "the pattern did not match" if match is None else "the pattern matched"}
    if match is not None:
        data["matchedText"] = match[:_MAX_SHOWN]
    if len(text_) > MAX_REGEX_TEXT:
        data["truncated"] = True
    return match is not None, data


def count_sentences(text_: str) -> int:
    """Count sentences: non-blank stretches ended by . ! ? (or by the end of the text)."""
    return sum(1 for part in _SENTENCE_END.split(text_) if part.strip())


def sentence_count(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the number of sentences is within [minSentences, maxSentences]."""
    return _in_range("sentences", count_sentences(inp.text), params["minSentences"], params["maxSentences"])


def word_count(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the number of whitespace-separated words is within [minWords, maxWords]."""
    return _in_range("words", len(inp.text.split()), params["minWords"], params["maxWords"])


def character_count(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the number of characters is within [minCharacters, maxCharacters]."""
    return _in_range("characters", len(inp.text), params["minCharacters"], params["maxCharacters"])


def _in_range(unit: str, found: int, low: float, high: float) -> Result:
    inside = low <= found <= high
    where = "within" if inside else "outside"
    return inside, {"count": found, "min": low, "max": high,
                    "explanation": f"{found} {unit}, {where} the range {_number(low)} to {_number(high)}"}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def json_schema(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the text (or JSON in it) validates against `schema`."""
    validator = _validator(json.dumps(params["schema"], sort_keys=True))
    values = json_values(inp.text)
    if not values:
        return False, {"explanation": "no JSON found in the text"}
    first_errors: list[dict[str, str]] = []
    for value in values:
        try:
            errors = sorted(validator.iter_errors(value), key=lambda err: [str(part) for part in err.path])
        except referencing.exceptions.Unresolvable as err:
            raise CheckError(f"the schema has a $ref that cannot be resolved: {err}") from None
        if not errors:
            return True, {"explanation": "the JSON matches the schema"}
        first_errors = first_errors or [{"path": "/" + "/".join(str(p) for p in err.path), "message": err.message}
                                        for err in errors[:5]]
    return False, {"explanation": "the JSON does not match the schema", "validationErrors": first_errors}


@lru_cache(maxsize=128)
def _validator(schema_text: str) -> Any:
    """Return a validator for a schema; an empty registry means a $ref is never fetched from the network."""
    loaded = json.loads(schema_text)
    return jsonschema.validators.validator_for(loaded)(loaded, registry=referencing.Registry())


def json_keys(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether a JSON object in the text has any / all / none of `keys`."""
    keys, operator = params["keys"], params["operator"]
    objects = [value for value in json_values(inp.text) if isinstance(value, dict)]
    if not objects:
        return False, {"explanation": "no JSON object found in the text", "operator": operator}
    best: dict[str, Any] = {}
    for obj in objects:
        present = [key for key in keys if key in obj]
        missing = [key for key in keys if key not in obj]
        if _meets(operator, present, missing):
            return True, {"explanation": f"a JSON object meets '{operator}'", "operator": operator,
                          "presentKeys": present, "missingKeys": missing}
        if not best or len(present) > len(best["presentKeys"]):
            best = {"presentKeys": present, "missingKeys": missing}
    return False, {"explanation": f"no JSON object meets '{operator}'", "operator": operator, **best}


def json_values(text_: str) -> list[Any]:
    """Return the JSON values of the text: the whole text, ```json fenced blocks, else the first JSON in prose."""
    values: list[Any] = []
    stripped = text_.strip()
    if stripped:
        values += _parsed(stripped)
    for fence in _JSON_FENCE.finditer(text_):
        if fence.group(1).lower() in ("", "json"):
            values += _parsed(fence.group(2).strip())
    if not values:
        values += _embedded_json(text_)
    return values


def _parsed(candidate: str) -> list[Any]:
    try:
        return [json.loads(candidate)]
    except ValueError:
        return []


def _embedded_json(text_: str) -> list[Any]:
    """Return the first JSON object or array that starts somewhere in prose (a bounded number of tries)."""
    decoder = json.JSONDecoder()
    for tries, match in enumerate(re.finditer(r"[{\[]", text_)):
        if tries >= _JSON_SCAN_STARTS:
            break
        try:
            return [decoder.raw_decode(text_, match.start())[0]]
        except ValueError:
            continue
    return []


def contains(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the text contains any / all / none of `words` (case-sensitive substrings)."""
    words, operator = params["words"], params["operator"]
    found = [word for word in words if word in inp.text]
    missing = [word for word in words if word not in inp.text]
    return _meets(operator, found, missing), {"operator": operator, "foundWords": found, "missingWords": missing,
                                              "explanation": f"found {len(found)} of {len(words)} words"}


def _meets(operator: str, present: list[str], missing: list[str]) -> bool:
    if operator == "all":
        return not missing
    if operator == "none":
        return not present
    return bool(present)


def valid_urls(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether every URL in the text is well-formed (and, with onlyDNS, whether every host resolves)."""
    urls = find_urls(inp.text)
    if not urls:
        return False, {"explanation": "no URLs found in the text", "validUrls": [], "invalidUrls": []}
    hosts = {url: url_host(url) for url in urls}
    data: dict[str, Any] = {"validationMethod": "DNS lookup" if params["onlyDNS"] else "syntax"}
    if params["onlyDNS"]:
        resolved, skipped = _resolve_hosts([host for host in hosts.values() if host])
        hosts = {url: host if host and resolved.get(host, True) else None for url, host in hosts.items()}
        if skipped:
            data["unresolvedHostsNotChecked"] = skipped
    good = [url for url, host in hosts.items() if host]
    bad = [url for url, host in hosts.items() if not host]
    data.update(validUrls=good, invalidUrls=bad,
                explanation=f"{len(good)} of {len(hosts)} URLs valid")
    return not bad, data


def find_urls(text_: str) -> list[str]:
    """Return the distinct http(s) URLs of the text, without trailing punctuation."""
    found: dict[str, None] = {}
    for match in _URL.finditer(text_):
        url = match.group(0).rstrip(".,;:!?")
        while url.endswith(")") and url.count("(") < url.count(")"):
            url = url[:-1].rstrip(".,;:!?")
        found[url] = None
    return list(found)


def url_host(url: str) -> str | None:
    """Return the host of a well-formed http(s) URL, or None when the URL is malformed."""
    try:
        parts = urlsplit(url)
        _ = parts.port
        host = parts.hostname or ""
    except ValueError:
        return None
    if not host or parts.scheme.lower() not in ("http", "https"):
        return None
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_host.removesuffix(".").split(".")
    if ascii_host == "localhost" or (len(labels) > 1 and all(_LABEL.fullmatch(label) for label in labels)
                                     and _TOP_LABEL.fullmatch(labels[-1])):
        return ascii_host
    return None


def _resolve_hosts(hosts: list[str]) -> tuple[dict[str, bool], list[str]]:
    """Resolve up to MAX_DNS_HOSTS distinct hosts within DNS_TIMEOUT_S; return host → resolves, and the skipped."""
    distinct = list(dict.fromkeys(hosts))
    checked, skipped = distinct[:MAX_DNS_HOSTS], distinct[MAX_DNS_HOSTS:]
    futures = {host: dns_pool().submit(_resolves, host) for host in checked}
    wait(futures.values(), timeout=DNS_TIMEOUT_S)
    results: dict[str, bool] = {}
    for host, future in futures.items():
        try:
            results[host] = future.result(timeout=0)
        except FutureTimeout:
            future.cancel()
            results[host] = False
    return results, skipped


def _resolves(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        return bool(socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM))
    except (OSError, UnicodeError):
        return False


def contains_code(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the text has a fenced code block tagged with the language `format`."""
    wanted = canonical_language(params["format"])
    found = list(dict.fromkeys(canonical_language(tag) for tag in _FENCE_TAG.findall(inp.text)))
    return wanted in found, {"format": params["format"], "foundFormats": found,
                             "explanation": f"code blocks found: {', '.join(found) or 'none'}"}


def canonical_language(name: str) -> str:
    """Return the canonical lower-case name of a language or one of its common aliases."""
    key = name.strip().lower()
    return _CANONICAL_LANGUAGE.get(key, key)


def all_uppercase(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether no letter of the text is lower case."""
    lower = sum(1 for ch in inp.text if ch.islower())
    return not lower, {"explanation": f"{lower} lower-case letters"}


def all_lowercase(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether no letter of the text is upper case."""
    upper = sum(1 for ch in inp.text if ch.isupper())
    return not upper, {"explanation": f"{upper} upper-case letters"}


def ends_with(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the text (trailing whitespace ignored) ends with `suffix`, or with `suffix` and a full stop."""
    suffix, end = params["suffix"], inp.text.rstrip()
    hit = end.endswith(suffix) or end.endswith(suffix + ".")
    return hit, {"suffix": suffix, "explanation": "the text ends with the suffix" if hit
                 else "the text does not end with the suffix"}


def not_null(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether there is text that is not only whitespace."""
    present = bool(inp.raw_text and inp.raw_text.strip())
    return present, {"explanation": "the text is not empty" if present else "the text is empty or missing"}


# --- request checks ----------------------------------------------------------------------------

def _request_model(inp: CheckInput) -> str:
    model = inp.request_json.get("model") if isinstance(inp.request_json, Mapping) else None
    if not isinstance(model, str) or not model:
        raise CheckError("the request names no model")
    return model


def model_whitelist(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the request's model is one of `models`."""
    model = _request_model(inp)
    allowed = model in params["models"]
    return allowed, {"requestedModel": model, "allowedModels": params["models"],
                     "explanation": f"model '{model}' is {'' if allowed else 'not '}in the list"}


def model_rules(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the request's model is allowed by the rules matching its metadata (else by the defaults)."""
    model = _request_model(inp)
    defaults, mapping = rules_parts(params["rules"])
    allowed: list[str] = []
    matched: list[str] = []
    for key, by_value in mapping.items():
        for value in _metadata_values(inp.metadata.get(key)):
            if value in by_value:
                matched.append(f"{key}:{value}")
                allowed += by_value[value]
    source = "rules" if matched else "defaults"
    allowed = list(dict.fromkeys(allowed if matched else defaults))
    hit = model in allowed
    return hit, {"requestedModel": model, "allowedModels": allowed, "matchedRules": matched, "source": source,
                 "explanation": f"model '{model}' is {'' if hit else 'not '}allowed by the {source}"}


def _metadata_values(value: Any) -> Iterator[str]:
    """Yield a metadata value (or each item of a list) as text; booleans as JSON spells them."""
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        yield json.dumps(item) if isinstance(item, bool) else str(item)


def required_metadata_keys(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the metadata has all / any / none of `metadataKeys`."""
    keys, operator = params["metadataKeys"], params["operator"]
    present = [key for key in keys if key in inp.metadata]
    missing = [key for key in keys if key not in inp.metadata]
    return _meets(operator, present, missing), {"operator": operator, "presentKeys": present,
                                                "missingKeys": missing,
                                                "explanation": f"{len(present)} of {len(keys)} keys present"}


def allowed_request_types(inp: CheckInput, params: Mapping[str, Any]) -> Result:
    """Tell whether the endpoint is allowed: not in `blockedTypes`, and in `allowedTypes` when that is given."""
    names = {inp.endpoint}
    if isinstance(inp.request_json, Mapping) and inp.request_json.get("stream") is True:
        names.add(f"stream-{inp.endpoint}")  # Portkey names streamed variants too
    allowed = type_names(params["allowedTypes"]) if params["allowedTypes"] is not None else None
    blocked = type_names(params["blockedTypes"]) or []
    if names & set(blocked):
        return False, {"currentRequestType": inp.endpoint, "explanation": f"'{inp.endpoint}' is blocked"}
    if allowed is not None and not names & set(allowed):
        return False, {"currentRequestType": inp.endpoint, "explanation": f"'{inp.endpoint}' is not allowed"}
    return True, {"currentRequestType": inp.endpoint, "explanation": f"'{inp.endpoint}' is allowed"}


def _types_cross(params: Mapping[str, Any]) -> list[Problem]:
    both = set(type_names(params["allowedTypes"]) or []) & set(type_names(params["blockedTypes"]) or [])
    if both:
        return [(("blockedTypes",), f"lists types that allowedTypes allows too: {', '.join(sorted(both))}")]
    return []


def _range(low: str, high: str, default_high: int) -> dict[str, Param]:
    return {low: Param(count, default=0), high: Param(count, default=default_high)}


_OPERATOR_ANY = Param(one_of(*OPERATORS), default="any")

_SPECS = (
    CheckSpec("regexMatch", regex_match, {"rule": Param(rule, required=True)}),
    CheckSpec("sentenceCount", sentence_count, _range("minSentences", "maxSentences", 99999),
              cross=range_of("minSentences", "maxSentences")),
    CheckSpec("wordCount", word_count, _range("minWords", "maxWords", 99999), cross=range_of("minWords", "maxWords")),
    CheckSpec("characterCount", character_count, _range("minCharacters", "maxCharacters", 9999999),
              cross=range_of("minCharacters", "maxCharacters")),
    CheckSpec("jsonSchema", json_schema, {"schema": Param(schema, required=True)}),
    CheckSpec("jsonKeys", json_keys, {"keys": Param(texts, required=True), "operator": _OPERATOR_ANY}),
    CheckSpec("contains", contains, {"words": Param(texts, required=True), "operator": _OPERATOR_ANY}),
    CheckSpec("validUrls", valid_urls, {"onlyDNS": Param(flag, default=False)}),
    CheckSpec("containsCode", contains_code, {"format": Param(text, required=True)}),
    CheckSpec("alluppercase", all_uppercase),
    CheckSpec("alllowercase", all_lowercase),
    CheckSpec("endsWith", ends_with, {"suffix": Param(text, required=True)}),
    CheckSpec("notNull", not_null),
    CheckSpec("modelWhitelist", model_whitelist, {"models": Param(texts, required=True)}),
    CheckSpec("modelRules", model_rules, {"rules": Param(rules_shape, required=True)}),
    CheckSpec("requiredMetadataKeys", required_metadata_keys, {"metadataKeys": Param(texts, required=True),
                                                               "operator": Param(one_of("all", "any", "none"),
                                                                                 default="all")}),
    CheckSpec("allowedRequestTypes", allowed_request_types,
              {"allowedTypes": Param(request_types), "blockedTypes": Param(request_types)}, cross=_types_cross),
    *mutators.SPECS,
    *remote.SPECS,
)

CHECKS: dict[str, CheckSpec] = {f"default.{spec.name}": spec for spec in _SPECS}


def qualified(check_id: str) -> str:
    """Return a check id with its source: `regexMatch` is `default.regexMatch`."""
    return check_id if "." in check_id else f"default.{check_id}"


def lookup(check_id: Any) -> CheckSpec | None:
    """Return the spec of a check id (with or without `default.`), or None when unknown."""
    return CHECKS.get(qualified(check_id)) if isinstance(check_id, str) and check_id else None

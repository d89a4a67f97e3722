"""PricingTable: matching rule, cost arithmetic, the shipped table, and the gateway file's overrides."""

from __future__ import annotations

import math
import re
import tomllib

import pytest

from app.usage import Cost, Price, PricingTable, Usage
from app.usage.pricing import DEFAULT_PRICING_FILE

MINI = Price(input_per_million=0.15, output_per_million=0.60, cache_read_per_million=0.075)
FOUR_O = Price(input_per_million=2.50, output_per_million=10.00, cache_read_per_million=1.25)
SONNET = Price(input_per_million=3.0, output_per_million=15.0, cache_read_per_million=0.30,
               cache_write_per_million=3.75)


def table() -> PricingTable:
    """Return a small table for matching tests."""
    return PricingTable({
        "openai/gpt-4o": FOUR_O,
        "openai/gpt-4o-mini": MINI,
        "OpenAI/GPT-4": Price(input_per_million=30, output_per_million=60),
        "anthropic/claude-sonnet-4": SONNET,
        "bedrock/anthropic.claude-sonnet-4-20250514": SONNET,
        "bedrock/global.anthropic.claude-sonnet-4-5": SONNET,
        "google/gemini-2.0-flash": Price(input_per_million=0.10, output_per_million=0.40),
        "cohere/command-r-08-2024": Price(input_per_million=0.15, output_per_million=0.60),
        "mistral-ai/mistral-large": Price(input_per_million=2, output_per_million=6),
    })


# --- matching ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("provider", "model", "key"), [
    ("openai", "gpt-4o-mini", "openai/gpt-4o-mini"),                                 # exact
    ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),                      # dated snapshot
    ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
    ("OPENAI", "GPT-4o-Mini", "openai/gpt-4o-mini"),                                 # case-insensitive
    ("openai", "gpt-4-0613", "openai/gpt-4"),                                        # -MMDD snapshot
    ("anthropic", "claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),          # -YYYYMMDD
    ("anthropic", "claude-sonnet-4@20250514", "anthropic/claude-sonnet-4"),          # Vertex @YYYYMMDD
    ("google", "gemini-2.0-flash-001", "google/gemini-2.0-flash"),                   # -NNN
    ("cohere", "command-r-08-2024", "cohere/command-r-08-2024"),
    ("mistral-ai", "mistral-large-2411", "mistral-ai/mistral-large"),                # -YYMM
    ("bedrock", "anthropic.claude-sonnet-4-20250514-v1:0", "bedrock/anthropic.claude-sonnet-4-20250514"),
    ("bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0", "bedrock/anthropic.claude-sonnet-4-20250514"),
    ("bedrock", "eu.anthropic.claude-sonnet-4-20250514-v1:0", "bedrock/anthropic.claude-sonnet-4-20250514"),
    ("bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock/global.anthropic.claude-sonnet-4-5"),
    ("bedrock", "anthropic.claude-sonnet-4-20250514-v1%3A0", "bedrock/anthropic.claude-sonnet-4-20250514"),
    ("bedrock", "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0",
     "bedrock/anthropic.claude-sonnet-4-20250514"),
])
def test_model_matches(provider: str, model: str, key: str) -> None:
    assert table().match(provider, model) == key


@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "gpt-4o-mini-tts"),              # a different model sharing a prefix
    ("openai", "gpt-4o-audio-preview"),
    ("openai", "gpt-4-turbo"),
    ("openai", "gpt-4-1106-preview"),
    ("openai", "gpt-4.1"),                      # "gpt-4" must not price "gpt-4.1"
    ("openai", "gpt-4o-latest"),                # moving alias, not a snapshot
    ("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),
    ("anthropic", "claude-sonnet-4-5-20250929"),  # one-digit "-5" is a version, not a snapshot
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.0-flash-lite-001"),
    ("google", "gemini-2.0-flash-exp"),
    ("bedrock", "global.anthropic.claude-sonnet-4-20250514-v1:0"),  # global profiles need their own key
    ("bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("azure-openai", "gpt-4o"),                 # another provider's key does not apply
    ("openai", ""),
    ("", "gpt-4o"),
])
def test_no_false_match(provider: str, model: str) -> None:
    assert table().match(provider, model) is None


def test_longest_matching_key_wins() -> None:
    prices = PricingTable({"openai/gpt-4o": FOUR_O, "openai/gpt-4o-2024-05-13": Price(input_per_million=5)})
    assert prices.match("openai", "gpt-4o-2024-05-13") == "openai/gpt-4o-2024-05-13"
    assert prices.match("openai", "gpt-4o-2024-11-20") == "openai/gpt-4o"


def test_without_the_mini_key_gpt_4o_does_not_price_mini() -> None:
    prices = PricingTable({"openai/gpt-4o": FOUR_O})
    assert prices.match("openai", "gpt-4o-mini-2024-07-18") is None
    assert prices.cost("openai", Usage(model="gpt-4o-mini", input_tokens=10)) == Cost(None, None, True)


def test_exact_only_keys_price_no_snapshot() -> None:
    prices = PricingTable({"openai/gpt-4o": FOUR_O}, exact_only=["openai/gpt-4o"])
    assert prices.match("openai", "gpt-4o") == "openai/gpt-4o"
    assert prices.match("openai", "gpt-4o-2024-05-13") is None
    assert prices.merged({"openai/gpt-4o": MINI}).match("openai", "gpt-4o-2024-05-13") is None


# --- cost --------------------------------------------------------------------------------------

def test_cost_exact_key() -> None:
    cost = table().cost("openai", Usage(model="gpt-4o-mini", input_tokens=1_000_000, output_tokens=1_000_000))
    assert cost == Cost(usd=0.75, priced_as="openai/gpt-4o-mini", unknown_model=False)


def test_cost_with_dated_model_and_cached_prompt() -> None:
    usage = Usage(model="gpt-4o-mini-2024-07-18", input_tokens=2006, output_tokens=300, cache_read_tokens=1920)
    cost = table().cost("openai", usage)
    expected = (86 * 0.15 + 1920 * 0.075 + 300 * 0.60) / 1e6
    assert cost.priced_as == "openai/gpt-4o-mini"
    assert cost.usd == round(expected, 9)


def test_cost_with_cache_writes_and_reads() -> None:
    usage = Usage(model="claude-sonnet-4-20250514", input_tokens=21 + 188086 + 1000, output_tokens=393,
                  cache_read_tokens=1000, cache_write_tokens=188086)
    cost = table().cost("anthropic", usage)
    assert cost.usd == round((21 * 3.0 + 1000 * 0.30 + 188086 * 3.75 + 393 * 15.0) / 1e6, 9)


def test_cache_tokens_without_their_own_rate_are_priced_as_input() -> None:
    prices = PricingTable({"x/m": Price(input_per_million=2.0, output_per_million=4.0)})
    usage = Usage(model="m", input_tokens=300, output_tokens=10, cache_read_tokens=100, cache_write_tokens=50)
    assert prices.cost("x", usage).usd == round((300 * 2.0 + 10 * 4.0) / 1e6, 9)


def test_free_cache_reads_are_free_not_input_priced() -> None:
    prices = PricingTable({"x/m": Price(input_per_million=2.0, cache_read_per_million=0.0)})
    assert prices.cost("x", Usage(model="m", input_tokens=100, cache_read_tokens=100)).usd == 0.0


def test_search_units_images_and_audio_seconds() -> None:
    prices = PricingTable({
        "cohere/rerank-v3.5": Price(per_search_unit=0.002),
        "openai/dall-e-3": Price(per_image=0.04),
        "openai/whisper-1": Price(per_audio_second=0.0001),
    })
    assert prices.cost("cohere", Usage(model="rerank-v3.5", search_units=3)).usd == 0.006
    assert prices.cost("openai", Usage(model="dall-e-3", images=2)).usd == 0.08
    assert prices.cost("openai", Usage(model="whisper-1", audio_seconds=8.470000267028809)).usd == 0.000847


def test_cost_is_rounded_to_a_billionth() -> None:
    prices = PricingTable({"x/m": Price(input_per_million=0.15)})
    usd = prices.cost("x", Usage(model="m", input_tokens=1)).usd
    assert usd == 1.5e-07
    assert prices.cost("x", Usage(model="m", input_tokens=3)).usd == round(3 * 0.15 / 1e6, 9)


def test_unknown_model_is_flagged_and_not_priced() -> None:
    assert table().cost("openai", Usage(model="gpt-9", input_tokens=5)) == Cost(None, None, True)
    assert table().cost("nobody", Usage(model="gpt-4o", input_tokens=5)) == Cost(None, None, True)
    assert table().cost("openai", Usage(input_tokens=5)) == Cost(None, None, True)


def test_empty_usage_costs_nothing_known() -> None:
    assert table().cost("openai", Usage(model="gpt-4o")) == Cost(None, None, False)
    assert table().cost("openai", Usage()) == Cost(None, None, False)


def test_zero_usage_costs_zero() -> None:
    assert table().cost("openai", Usage(model="gpt-4o", input_tokens=0, output_tokens=0)).usd == 0.0


def test_entry_lacking_a_needed_rate_is_flagged() -> None:
    prices = PricingTable({"openai/text-embedding-3-small": Price(input_per_million=0.02)})
    ok = prices.cost("openai", Usage(model="text-embedding-3-small", input_tokens=8))
    assert ok == Cost(usd=1.6e-07, priced_as="openai/text-embedding-3-small", unknown_model=False)
    odd = prices.cost("openai", Usage(model="text-embedding-3-small", input_tokens=8, output_tokens=3))
    assert odd == Cost(usd=None, priced_as="openai/text-embedding-3-small", unknown_model=True)


# --- overrides ---------------------------------------------------------------------------------

def test_overrides_win_and_replace_the_whole_entry() -> None:
    base = table()
    overrides = PricingTable.parse_overrides({"openai/gpt-4o-mini": {"input": 0.10, "output": 0.40},
                                              "together-ai/meta-llama/Llama-3.3-70B": {"input": 0.88, "output": 0.88}})
    merged = base.merged(overrides)
    usage = Usage(model="gpt-4o-mini-2024-07-18", input_tokens=1_000_000, cache_read_tokens=1_000_000)
    # The override gives no cache_read price, so cached tokens are priced as input at the new price.
    assert merged.cost("openai", usage).usd == 0.10
    assert merged.cost("together-ai", Usage(model="meta-llama/Llama-3.3-70B", output_tokens=10**6)).usd == 0.88
    assert base.cost("openai", usage).usd == 0.075  # the base table is unchanged


def test_gateway_file_pricing_table_parses() -> None:
    raw = tomllib.loads('''
[pricing."openai/gpt-4o-mini"]
input = 0.15
output = 0.60
cache_read = 0.075

[pricing."cohere/rerank-v3.5"]
search_unit = 0.002

[pricing."openai/whisper-1"]
audio_second = 0.0001

[pricing."openai/dall-e-3"]
image = 0.04
cache_write = 0
''')["pricing"]
    parsed = PricingTable.parse_overrides(raw)
    assert parsed == {
        "openai/gpt-4o-mini": MINI,
        "cohere/rerank-v3.5": Price(per_search_unit=0.002),
        "openai/whisper-1": Price(per_audio_second=0.0001),
        "openai/dall-e-3": Price(per_image=0.04, cache_write_per_million=0.0),
    }


@pytest.mark.parametrize(("raw", "needles"), [
    ({"gpt-4o-mini": {"input": 1}}, ['"gpt-4o-mini"', "provider/model"]),
    ({"openai": {"gpt-4o-mini": {"input": 1}}}, ['"openai"', "provider/model"]),  # [pricing.openai."gpt-4o-mini"]
    ({"/gpt-4o": {"input": 1}}, ['"/gpt-4o"']),
    ({"openai/gpt-4o": 0.15}, ['"openai/gpt-4o"', "table"]),
    ({"openai/gpt-4o": {}}, ['"openai/gpt-4o"', "no price"]),
    ({"openai/gpt-4o": {"inptu": 1}}, ['"openai/gpt-4o"', '"inptu"', "unknown field"]),
    ({"openai/gpt-4o": {"input": "0.15"}}, ['"openai/gpt-4o"', '"input"', "number"]),
    ({"openai/gpt-4o": {"output": True}}, ['"openai/gpt-4o"', '"output"', "number"]),
    ({"openai/gpt-4o": {"cache_read": -1}}, ['"openai/gpt-4o"', '"cache_read"', ">= 0"]),
    ({"openai/gpt-4o": {"image": math.inf}}, ['"openai/gpt-4o"', '"image"', "finite"]),
    ({"openai/gpt-4o": {"search_unit": math.nan}}, ['"openai/gpt-4o"', '"search_unit"', "finite"]),
    ({"openai/gpt-4o": {"input": 1, "audio_second": [1]}}, ['"openai/gpt-4o"', '"audio_second"']),
])
def test_parse_overrides_errors_name_key_and_field(raw: dict[str, object], needles: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        PricingTable.parse_overrides(raw)
    for needle in needles:
        assert needle in str(err.value)


def test_parse_overrides_refuses_a_non_table() -> None:
    with pytest.raises(ValueError, match="pricing"):
        PricingTable.parse_overrides(["openai/gpt-4o"])  # type: ignore[arg-type]


# --- the shipped table ---------------------------------------------------------------------------

def test_default_table_states_when_prices_were_taken() -> None:
    header = DEFAULT_PRICING_FILE.read_text().split("\n[", 1)[0]
    assert re.search(r"taken on \d{4}-\d{2}-\d{2}", header)


def test_default_table_loads_and_is_cached() -> None:
    default = PricingTable.default()
    assert default is PricingTable.default()
    assert len(default) > 50
    raw = tomllib.loads(DEFAULT_PRICING_FILE.read_text())
    for key, entry in raw["prices"].items():
        assert key.count("/") >= 1 and entry, key


@pytest.mark.parametrize(("provider", "model", "key"), [
    ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
    ("openai", "gpt-4.1-2025-04-14", "openai/gpt-4.1"),
    ("openai", "text-embedding-3-small", "openai/text-embedding-3-small"),
    ("azure-openai", "gpt-4o-mini-2024-07-18", "azure-openai/gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
    ("anthropic", "claude-3-5-haiku-20241022", "anthropic/claude-3-5-haiku"),
    ("cohere", "rerank-v3.5", "cohere/rerank-v3.5"),
    ("google", "gemini-2.5-flash", "google/gemini-2.5-flash"),
    ("groq", "llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile"),
    ("bedrock", "us.anthropic.claude-3-5-haiku-20241022-v1:0", "bedrock/anthropic.claude-3-5-haiku-20241022"),
    ("bedrock", "global.anthropic.claude-haiku-4-5-20251001-v1:0", "bedrock/global.anthropic.claude-haiku-4-5"),
])
def test_default_table_prices_common_models(provider: str, model: str, key: str) -> None:
    assert PricingTable.default().match(provider, model) == key


def test_default_table_does_not_price_dearer_gpt_4o_snapshot_as_gpt_4o() -> None:
    default = PricingTable.default()
    assert default.match("openai", "gpt-4o") == "openai/gpt-4o"
    assert default.match("openai", "gpt-4o-2024-05-13") is None
    assert default.match("azure-openai", "gpt-4o-2024-05-13") is None


def test_default_table_rerank_is_priced_per_search_unit() -> None:
    cost = PricingTable.default().cost("cohere", Usage(model="rerank-v3.5", search_units=1))
    assert cost == Cost(usd=0.002, priced_as="cohere/rerank-v3.5", unknown_model=False)


def test_default_table_bedrock_regional_profiles_cost_more_than_global() -> None:
    usage = Usage(input_tokens=1_000_000)
    default = PricingTable.default()
    regional = default.cost("bedrock", Usage(model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                                             input_tokens=usage.input_tokens))
    global_ = default.cost("bedrock", Usage(model="global.anthropic.claude-sonnet-4-5-20250929-v1:0",
                                            input_tokens=usage.input_tokens))
    assert (regional.usd, global_.usd) == (3.3, 3.0)

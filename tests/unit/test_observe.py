"""The call observer: usage fields of the access line, one warning per unpriced model."""

from __future__ import annotations

import logging

from app.call.record import CallRecord
from app.logs import usage_fields
from app.observe import CallObserver
from app.usage import PricingTable


def test_unpriced_model_is_warned_about_once(caplog) -> None:
    observer = CallObserver(PricingTable.default(), None, None)
    with caplog.at_level(logging.WARNING, logger="app.observe"):
        for _ in range(5):
            observer._flag_unpriced("openai", "my-finetune")
        observer._flag_unpriced("openai", "other-model")
    assert len(caplog.records) == 2
    assert "openai/my-finetune" in caplog.records[0].getMessage()


def test_usage_fields_carry_only_what_the_answer_reported() -> None:
    call = CallRecord(route="unified", status=200, model="gpt-4o-mini", priced_as="openai/gpt-4o-mini",
                      input_tokens=10, output_tokens=5, cost_usd=0.000005)
    fields = usage_fields(call)
    assert fields == {"model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.000005}
    assert usage_fields(CallRecord(route="unified", status=200)) == {}

"""Usage and cost of relayed answers: a tap that reads usage from the relayed bytes, and a price table.

How the gateway uses it:

- at start-up: ``prices = PricingTable.default().merged(PricingTable.parse_overrides(settings.pricing))``
  (a ValueError names the [pricing] key and field at fault);
- per answer: ``tap = UsageTap(content_type, content_encoding, request_model)`` with the Content-Type and
  Content-Encoding of the bytes the relay sends (None for the encoding if the relay decompressed them),
  ``tap.feed(chunk)`` for each chunk as it goes out, and ``tap.result()`` once the body ended or was cut;
  neither raises, neither touches the chunk; a translated answer needs no tap: its translator reports the
  usage it told the client (``UsageReport``, ``Answer.usage``), and both are a ``UsageSource``;
- ``prices.cost(provider_slug, usage)`` gives the Cost to log (usd None and unknown_model True when the
  answer used something the table cannot price).
"""

from __future__ import annotations

from app.usage.model import Usage, UsageSource
from app.usage.pricing import Cost, Price, PricingTable
from app.usage.report import UsageReport
from app.usage.tap import UsageTap

__all__ = ["Cost", "Price", "PricingTable", "Usage", "UsageReport", "UsageSource", "UsageTap"]

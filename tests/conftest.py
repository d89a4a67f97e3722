"""Shared fixtures: an app built from explicit settings, and its test client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.settings import CatalogEntry, GatewayKey, Settings, hash_key
from tests.fakes.provider import FakeProvider

GATEWAY_KEY = "pk-test-gateway-key"
PROVIDER_SECRET = "sk-test-provider-secret-0123456789"


def make_settings(**changes: Any) -> Settings:
    """Return test settings: one gateway key, a catalog entry, loopback allowed, no backoff."""
    base = Settings(
        workers=1, threads=8,
        keys=(GatewayKey(name="team-a", sha256=hash_key(GATEWAY_KEY)),),
        catalog={"cohere-prod": CatalogEntry(name="cohere-prod", provider="cohere", api_key="co-catalog-secret")},
        custom_hosts_allow=("127.0.0.1", "localhost"),
        backoff_base_ms=0,
    )
    return replace(base, **changes)


@pytest.fixture
def app_factory() -> Callable[..., Flask]:
    """Return a function that builds an app from settings changes."""
    def build(**changes: Any) -> Flask:
        app = create_app(make_settings(**changes))
        app.testing = True
        return app
    return build


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    """Return the default test app."""
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of the default app."""
    return app.test_client()


def gw_headers(**extra: str) -> dict[str, str]:
    """Return the gateway key header plus extras (underscores become dashes)."""
    headers = {"x-portkey-api-key": GATEWAY_KEY}
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    """Run one fake provider for the whole session."""
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def fake_provider(fake: FakeProvider) -> FakeProvider:
    """Return the session's fake provider, reset for this test."""
    fake.reset()
    return fake

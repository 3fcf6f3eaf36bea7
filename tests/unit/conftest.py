"""Fixtures of the app tests: a scripted vLLM and a factory that starts the gateway on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.settings import Settings
from routing.config import BackendPool, DeliberateConfig
from tests.fakes import FakeVLLM
from tests.unit.test_app import make_config

Factory = Callable[..., Any]


@pytest.fixture
def fake() -> FakeVLLM:
    return FakeVLLM()


@pytest.fixture
async def gateway(fake: FakeVLLM) -> AsyncIterator[Factory]:
    """Factory: start the app on a config, return (client, registry)."""
    stack: list[Any] = []

    async def start(
        config: DeliberateConfig | None = None,
    ) -> tuple[httpx.AsyncClient, CollectorRegistry]:
        registry = CollectorRegistry()
        transport = fake.transport()

        def transport_factory(pool: BackendPool) -> httpx.AsyncBaseTransport:
            return transport

        app = create_app(Settings(), config or make_config(), registry, transport_factory)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        stack.append((lifespan, client))
        return client, registry

    yield start
    for lifespan, client in stack:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)

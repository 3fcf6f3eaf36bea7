"""Shared fixtures. Integration fixtures (real vLLM) live in tests/integration/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.inprocess import LocalCoordinator
from tests.unit.local import opts


@pytest.fixture
async def coord() -> AsyncIterator[LocalCoordinator]:
    """A started in-process coordinator with `opts()`, closed after the test."""
    c = LocalCoordinator(opts())
    await c.start()
    yield c
    await c.close()

"""Fixtures shared by the unit tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from actors.inprocess import LocalCoordinator
from actors.journal import MemoryBackend
from tests.unit.local import opts


@pytest.fixture
async def coord() -> AsyncIterator[LocalCoordinator]:
    """A started in-process coordinator with `opts()`, closed after the test."""
    c = LocalCoordinator(opts())
    await c.start()
    yield c
    await c.close()


@pytest.fixture(params=["file", "mem"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh journal storage URI, once on disk and once in memory."""
    if request.param == "file":
        yield f"file://{tmp_path / 'journal'}"
    else:
        name = f"test-journal-{uuid.uuid4().hex}"
        yield f"mem://{name}"
        MemoryBackend.drop(name)

"""Fakes for the unit tests: fresh, empty ports for every test."""

from __future__ import annotations

import pytest

from tests.fakes import FakeQueue, InMemoryCallStore


@pytest.fixture
def store() -> InMemoryCallStore:
    return InMemoryCallStore()


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()

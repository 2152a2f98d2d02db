"""Timestamps in one format: UTC ISO 8601 with microseconds, which sorts as text."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def now_iso() -> str:
    return datetime.now(UTC).strftime(_FORMAT)


def iso_seconds_ago(seconds: float) -> str:
    """The ``now_iso()`` timestamp of ``seconds`` ago: compares as text with stored ones."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime(_FORMAT)


def now_ns() -> int:
    return time.time_ns()


def seconds_since(iso: str) -> float:
    """Seconds from an ``now_iso()`` timestamp until now."""
    then = datetime.strptime(iso, _FORMAT).replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds()

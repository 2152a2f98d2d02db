"""Timestamps in one format: UTC ISO 8601 with microseconds, which sorts as text."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ns() -> int:
    return time.time_ns()


def seconds_since(iso: str) -> float:
    """Seconds from an ``now_iso()`` timestamp until now."""
    then = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds()

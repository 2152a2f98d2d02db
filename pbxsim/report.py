"""The simulator's report: what it sent, what came back, and what the stack lost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100)
    return ordered[int(rank) - 1]


def stored_sequences(packets: dict[str, Any], last_sequence: int | None) -> set[int]:
    """The sequences a call's GET says are stored, from its `packets` block.

    ``received`` distinct sequences fill the range from the lowest stored to
    ``max(highest_sequence, last_sequence)`` except ``missing``; so the lowest is
    ``upper + 1 - missing_count - received``. Needs the complete missing list.
    """
    received = int(packets["received"])
    if received == 0 or packets.get("highest_sequence") is None:
        return set()
    upper = int(packets["highest_sequence"])
    if last_sequence is not None:
        upper = max(upper, last_sequence)
    missing = set(packets["missing"])
    missing_count = int(packets.get("missing_count", len(missing)))
    if missing_count != len(missing):
        raise ValueError("the missing list is truncated; stored sequences cannot be derived")
    lowest = upper + 1 - missing_count - received
    return set(range(lowest, upper + 1)) - missing


def lost_sequences(acknowledged: set[int], packets: dict[str, Any], last_sequence: int | None) -> set[int]:
    """Sequences the stack answered 202 for but does not report as stored."""
    return acknowledged - stored_sequences(packets, last_sequence)


@dataclass
class CallOutcome:
    call_id: str
    acknowledged: set[int] = field(default_factory=set)  # sequences answered 202
    last_sequence: int | None = None
    ended_at: float | None = None  # wall clock, when the end was answered
    final_state: str | None = None
    completed_after_s: float | None = None
    lost: set[int] = field(default_factory=set)
    verify_error: str | None = None


@dataclass
class Report:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    connection_errors: int = 0
    packets_sent: int = 0
    streaming_s: float = 0.0
    calls: dict[str, CallOutcome] = field(default_factory=dict)

    def record(self, status: int | None, latency_ms: float) -> None:
        if status is None:
            self.connection_errors += 1
            self.statuses["error"] += 1
            return
        self.statuses[str(status) if status in (200, 202, 409) else "other"] += 1
        if status >= 500:
            self.statuses["5xx"] += 1
        self.latencies_ms.append(latency_ms)

    @property
    def server_errors(self) -> int:
        return self.statuses["5xx"] + self.connection_errors

    @property
    def lost_packets(self) -> int:
        return sum(len(c.lost) for c in self.calls.values())

    @property
    def unverified_calls(self) -> int:
        return sum(1 for c in self.calls.values() if c.verify_error)

    @property
    def ok(self) -> bool:
        return self.lost_packets == 0 and self.server_errors == 0 and self.unverified_calls == 0

    def to_dict(self) -> dict[str, Any]:
        done = [c.completed_after_s for c in self.calls.values() if c.completed_after_s is not None]
        states = Counter(c.final_state or "unknown" for c in self.calls.values())
        lost = {cid: sorted(c.lost) for cid, c in self.calls.items() if c.lost}
        return {
            "calls": len(self.calls),
            "packets_sent": self.packets_sent,
            "responses": {k: self.statuses[k] for k in ("202", "200", "409", "other")},
            "server_errors": self.server_errors,
            "connection_errors": self.connection_errors,
            "latency_ms": {
                "p50": percentile(self.latencies_ms, 50),
                "p95": percentile(self.latencies_ms, 95),
                "p99": percentile(self.latencies_ms, 99),
                "max": max(self.latencies_ms, default=None),
            },
            "packets_per_s": self.packets_sent / self.streaming_s if self.streaming_s else None,
            "final_states": dict(states),
            "end_to_completed_s": {"p50": percentile(done, 50), "p95": percentile(done, 95)},
            "lost_packets": self.lost_packets,
            "lost_by_call": dict(list(lost.items())[:50]),
            "unverified_calls": self.unverified_calls,
            "ok": self.ok,
        }

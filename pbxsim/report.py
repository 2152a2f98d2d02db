"""The simulator's report: what it sent, what came back, and what the stack lost or left wrong."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pbxsim.retry import Exchange
from pbxsim.speech import Heard, Speech, summarise

FINAL_STATES = ("COMPLETED", "FAILED")
# Final answers of the packet and end requests, by bucket. "503" is a request that gave
# up (its last answer was a 503 and its retries were used up); "other" is anything not
# 2xx, 4xx or 503, and no answer at all.
RESPONSE_KEYS = ("202", "200", "2xx", "409", "4xx", "503", "other")
REQUEST_KINDS = ("packets", "ends", "reads")


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100)
    return ordered[int(rank) - 1]


def response_key(status: int | None) -> str:
    if status is None:
        return "other"
    if status in (200, 202, 409, 503):
        return str(status)
    if 200 <= status < 300:
        return "2xx"
    if 400 <= status < 500:
        return "4xx"
    return "other"


# A packet's result in a batch's 200, as the answer it would have had alone: conflict and
# ended are the single route's 409s.
BATCH_RESULT_KEYS = {"accepted": "202", "duplicate": "200", "conflict": "409", "ended": "409"}


def batch_keys(exchange: Exchange, sequences: Sequence[int]) -> list[str] | None:
    """Each packet's RESPONSE_KEYS bucket from a batch request's final answer, in request order.

    A 200 gives each packet its own result. Any other final answer (a 503 that gave up, a
    413 or 422, no answer) is every packet's. None when a 200 does not answer exactly the
    packets sent, in their order: then no packet of it can count as acknowledged.
    """
    if exchange.status != 200:
        return [response_key(exchange.status)] * len(sequences)
    assert exchange.last is not None
    try:
        results = exchange.last.json()["results"]
        answered = [(r["sequence"], BATCH_RESULT_KEYS[r["status"]]) for r in results]
    except (ValueError, TypeError, KeyError):
        return None
    if [seq for seq, _ in answered] != list(sequences):
        return None
    return [key for _, key in answered]


def is_other(status: int | None) -> bool:
    """Not 2xx, not 4xx, not 503, or no answer: what a healthy stack never gives."""
    return status is None or not (200 <= status < 300 or 400 <= status < 500 or status == 503)


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
    """Sequences the stack acknowledged (202 or 200 duplicate) but does not report as stored."""
    return acknowledged - stored_sequences(packets, last_sequence)


# The attempts a failure reason counts in its round: "gave up after all retries (3 attempts;
# last error: ...)", as services.fail_exhausted and the sweeper word it.
_GAVE_UP = re.compile(r"(?:gave up after |\()(\d+) attempts?\b")
_PERMANENT = re.compile(r"failed permanently on attempt (\d+)")


def result_problems(call: dict[str, Any]) -> list[str]:
    """One result per round: what in a call's GET contradicts its state and AI history.

    Only what holds however the dependencies fail (retried writes, redelivered work
    items, an end reverted after SQS failed) is checked:
    - ``ai.attempts`` equals the length of ``ai.history``, numbered 1..n, rounds >= 1 and
      never going back;
    - COMPLETED: a transcript and a sentiment, no failure reason, and an attempt without
      an error in the last round of the history (the one that produced the result);
    - FAILED: no transcript or sentiment; a reason that counts N attempts ("gave up after
      all retries (N attempts; ...)") has at least N attempts in the last round of the
      history (the round the reason counted; a redelivered item may add one after), one
      that fails permanently on attempt K has attempt K with an error (the reason's
      presence is checked on its own);
    - IN_PROGRESS or PROCESSING_AI: no transcript or sentiment.
    """
    history: list[dict[str, Any]] = (call.get("ai") or {}).get("history") or []
    problems = _history_problems(call.get("ai") or {}, history)
    if not problems:
        problems = _result_problems(call, history)
    return problems


def _history_problems(ai: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    if ai.get("attempts") != len(history):
        problems.append(f"ai.attempts is {ai.get('attempts')} but ai.history has {len(history)} entries")
    if [h.get("number") for h in history] != list(range(1, len(history) + 1)):
        problems.append("ai.history is not numbered 1..n")
    rounds: list[Any] = [h.get("round") for h in history]
    if any(not isinstance(r, int) or r < 1 for r in rounds) or rounds != sorted(rounds):
        problems.append(f"ai.history rounds are not >= 1 and non-decreasing: {rounds}")
    return problems


def _result_problems(call: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    state, ai, reason = call.get("state"), call.get("ai") or {}, call.get("failure_reason")
    last_round = history[-1]["round"] if history else None
    in_last_round = [h for h in history if h["round"] == last_round]
    has_result = ai.get("transcript") is not None or ai.get("sentiment") is not None
    if state == "COMPLETED":
        if ai.get("transcript") is None or ai.get("sentiment") is None:
            problems.append("COMPLETED without a transcript and a sentiment")
        if reason:
            problems.append("COMPLETED with a failure_reason")
        if not history:
            problems.append("COMPLETED without any AI attempt")
        elif all(h.get("error") for h in in_last_round):
            problems.append(f"COMPLETED, but every attempt of round {last_round} failed")
    elif state == "FAILED":
        if has_result:
            problems.append("FAILED with an AI result")
        if reason and (m := _GAVE_UP.search(reason)) and int(m.group(1)) > len(in_last_round):
            problems.append(f"reason says {m.group(1)} attempts; history has {len(in_last_round)} in its last round")
        if reason and (m := _PERMANENT.search(reason)):
            k = int(m.group(1))
            if not 1 <= k <= len(history) or not history[k - 1].get("error"):
                problems.append(f"reason names attempt {k}, which the history does not show failed")
    elif state in ("IN_PROGRESS", "PROCESSING_AI") and has_result:
        problems.append(f"{state} with an AI result")
    return problems


@dataclass
class CallOutcome:
    call_id: str
    acknowledged: set[int] = field(default_factory=set)  # sequences answered 202 or 200 duplicate
    accepted: set[int] = field(default_factory=set)  # sequences answered 202
    last_sequence: int | None = None
    end_status: int | None = None  # the end's final answer; None if not ended or no answer
    ended_at: float | None = None  # wall clock, when the end was answered 202 or 200
    final_state: str | None = None  # as the wait saw it in a listing
    completed_after_s: float | None = None
    state: str | None = None  # as the check's GET saw it
    failure_reason: str | None = None
    problems: list[str] = field(default_factory=list)  # see result_problems
    lost: set[int] = field(default_factory=set)
    verify_error: str | None = None
    transcript: str | None = None  # ai.transcript, as the check's GET saw it
    sentiment: str | None = None  # ai.sentiment.label, likewise

    @property
    def ended(self) -> bool:
        return self.end_status in (200, 202)

    def answered(self, sequence: int, key: str) -> None:
        """A send of ``sequence`` got its final answer, a RESPONSE_KEYS bucket (a batch's result as its
        single-route status). 202 stored now, 200 stored before: by this send's own earlier attempt
        whose answer was a 503 (or lost), or by an earlier send of the same packet."""
        if key in ("200", "202"):
            self.acknowledged.add(sequence)
        if key == "202":
            self.accepted.add(sequence)


@dataclass
class Report:
    # Final answers to packets, one per packet sent: a batch's packets each count their own result.
    responses: Counter[str] = field(default_factory=Counter)
    end_responses: Counter[str] = field(default_factory=Counter)  # final answers to ends
    latencies_ms: list[float] = field(default_factory=list)  # every answer, retried 503s included
    retries: int = 0  # 503 answers retried, every kind of request
    gave_up: Counter[str] = field(default_factory=Counter)  # requests, by kind: packets (a batch is one), ends, reads
    # Answers not 2xx, 4xx or 503, every kind of request; and a batch's 200 that does not
    # answer the packets sent, which leaves them neither acknowledged nor refused.
    other_answers: int = 0
    connection_errors: int = 0  # requests without an answer, every kind
    packets_sent: int = 0
    requests: int = 0  # the requests that carried them: one per packet, or one per batch with --batch-ms
    streaming_s: float = 0.0  # sending every call's packets and ends
    waiting_s: float = 0.0  # then waiting for the ended calls to finish
    checking_s: float = 0.0  # then reading every call back
    waited: bool = False  # the run waited for the ended calls to finish
    calls: dict[str, CallOutcome] = field(default_factory=dict)
    speech: dict[str, Speech] = field(default_factory=dict)  # --speech: what each call said
    # The service's own count of its calls by state (GET /v1/calls/counts) once the run is over:
    # every call it holds, this run's and earlier ones: {state: {"count": n, "more": bool}},
    # more where it stopped counting. None: not asked (--no-verify) or not answered.
    service_counts: dict[str, dict[str, Any]] | None = None

    def record(self, kind: str, exchange: Exchange) -> None:
        """Count one request (``kind`` of REQUEST_KINDS) with all its attempts."""
        self._attempts(kind, exchange)
        if kind == "packets":
            self.requests += 1
            self.responses[response_key(exchange.status)] += 1
        elif kind == "ends":
            self.end_responses[response_key(exchange.status)] += 1

    def record_batch(self, exchange: Exchange, sequences: Sequence[int]) -> list[str]:
        """Count one batch request with all its attempts (as a packets request: a batch that gave up
        is one in ``gave_up``), and each of its packets in ``responses``; their keys, in request order."""
        self._attempts("packets", exchange)
        self.requests += 1
        keys = batch_keys(exchange, sequences)
        if keys is None:
            self.other_answers += 1
            keys = ["other"] * len(sequences)
        self.responses.update(keys)
        return keys

    def _attempts(self, kind: str, exchange: Exchange) -> None:
        self.latencies_ms.extend(a.latency_ms for a in exchange.answers)
        self.retries += exchange.retries
        self.gave_up[kind] += exchange.gave_up
        if exchange.error is not None:
            self.connection_errors += 1
        elif is_other(exchange.status):
            self.other_answers += 1

    @property
    def server_errors(self) -> int:
        """Answers other than 2xx, 4xx and 503, batch answers that do not answer their packets,
        and requests without an answer."""
        return self.other_answers + self.connection_errors

    @property
    def stored_without_202(self) -> int:
        """Packets acknowledged only by 200 duplicate, never 202: the write that stored one was
        answered 503 (or not at all), or its answer was lost inside the stack and the stack's
        own retry found the packet. They count as acknowledged, and are checked like the rest."""
        return sum(len(c.acknowledged - c.accepted) for c in self.calls.values())

    @property
    def lost_packets(self) -> int:
        return sum(len(c.lost) for c in self.calls.values())

    @property
    def unverified_calls(self) -> int:
        return sum(1 for c in self.calls.values() if c.verify_error)

    @property
    def stuck_calls(self) -> int | None:
        """Ended (202, or 200 once finished) but not COMPLETED or FAILED when the wait ended; None without a wait."""
        if not self.waited:
            return None
        return sum(1 for c in self.calls.values() if c.ended and not c.verify_error and c.state not in FINAL_STATES)

    @property
    def in_progress_after_end(self) -> int:
        return sum(1 for c in self.calls.values() if c.ended and c.state == "IN_PROGRESS")

    @property
    def failed_without_reason(self) -> int:
        return sum(1 for c in self.calls.values() if c.state == "FAILED" and not c.failure_reason)

    @property
    def inconsistent_calls(self) -> int:
        return sum(1 for c in self.calls.values() if c.problems)

    def failures(self) -> list[str]:
        """Why the run failed, one phrase per reason; empty when it passed."""
        counts = {
            "lost packets": self.lost_packets,
            "server errors (answers not 2xx/4xx/503, batch answers not matching the batch, or no answer)": (
                self.server_errors
            ),
            "calls not verified": self.unverified_calls,
            "stuck calls": self.stuck_calls or 0,
            "calls IN_PROGRESS after their end": self.in_progress_after_end,
            "FAILED calls without a reason": self.failed_without_reason,
            "calls whose result contradicts their state or AI history": self.inconsistent_calls,
        }
        return [f"{n} {what}" for what, n in counts.items() if n]

    @property
    def ok(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict[str, Any]:
        done = [c.completed_after_s for c in self.calls.values() if c.completed_after_s is not None]
        states = Counter(c.state or c.final_state or "unknown" for c in self.calls.values())
        lost = {cid: sorted(c.lost) for cid, c in self.calls.items() if c.lost}
        problems: dict[str, list[str]] = {}
        for cid, c in self.calls.items():
            found = [*c.problems, *([c.verify_error] if c.verify_error else [])]
            if c.ended and c.state == "IN_PROGRESS":
                found.append("IN_PROGRESS after its end was answered")
            elif self.waited and c.ended and not c.verify_error and c.state not in FINAL_STATES:
                found.append(f"stuck in {c.state}")
            if c.state == "FAILED" and not c.failure_reason:
                found.append("FAILED without a failure_reason")
            if found:
                problems[cid] = found
        return {
            "calls": len(self.calls),
            "packets_sent": self.packets_sent,
            "requests": self.requests,
            "packets_per_request": round(self.packets_sent / self.requests, 2) if self.requests else None,
            "responses": {k: self.responses[k] for k in RESPONSE_KEYS},
            "end_responses": {k: self.end_responses[k] for k in RESPONSE_KEYS},
            "retries": self.retries,
            "gave_up": {k: self.gave_up[k] for k in REQUEST_KINDS},
            "stored_without_202": self.stored_without_202,
            "server_errors": self.server_errors,
            "connection_errors": self.connection_errors,
            "latency_ms": {
                "p50": percentile(self.latencies_ms, 50),
                "p95": percentile(self.latencies_ms, 95),
                "p99": percentile(self.latencies_ms, 99),
                "max": max(self.latencies_ms, default=None),
            },
            "packets_per_s": self.packets_sent / self.streaming_s if self.streaming_s else None,
            "phases_s": {
                "streaming": round(self.streaming_s, 3),
                "waiting": round(self.waiting_s, 3),
                "checking": round(self.checking_s, 3),
            },
            "final_states": dict(states),
            "service_calls_by_state": self.service_counts,
            "end_to_completed_s": {"p50": percentile(done, 50), "p95": percentile(done, 95)},
            "lost_packets": self.lost_packets,
            "lost_by_call": dict(list(lost.items())[:50]),
            "unverified_calls": self.unverified_calls,
            "stuck_calls": self.stuck_calls,
            "in_progress_after_end": self.in_progress_after_end,
            "failed_without_reason": self.failed_without_reason,
            "inconsistent_calls": self.inconsistent_calls,
            "problems_by_call": dict(list(problems.items())[:50]),
            **({"speech": self.speech_summary()} if self.speech else {}),
            "ok": self.ok,
        }

    def speech_summary(self) -> dict[str, Any]:
        """--speech: each call's transcript against the text it said (see speech.summarise)."""
        heard = []
        for call_id, speech in self.speech.items():
            c = self.calls[call_id]
            heard.append(Heard(call_id, speech, c.state or c.final_state, c.transcript, c.sentiment))
        return summarise(heard)

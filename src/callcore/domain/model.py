"""The call, its states and the rules for its packets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeGuard

from callcore.domain.errors import InvalidTransitionError

CALL_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_CALL_ID_RE = re.compile(CALL_ID_PATTERN)

# A call holds at most this many packets: sequences 0 to MAX_SEQUENCE, two hours of 20 ms
# packets. It bounds what one call stores and what the worker reads; a PBX numbering
# from 0 never comes near it in a real call.
MAX_CALL_PACKETS = 360_000
MAX_SEQUENCE = MAX_CALL_PACKETS - 1

# `missing` lists at most this many sequences; `missing_count` always has the total.
MISSING_LIST_LIMIT = 1000


class CallState(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    PROCESSING_AI = "PROCESSING_AI"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ARCHIVED = "ARCHIVED"


_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.IN_PROGRESS: frozenset({CallState.PROCESSING_AI}),
    CallState.PROCESSING_AI: frozenset({CallState.COMPLETED, CallState.FAILED}),
    CallState.COMPLETED: frozenset({CallState.ARCHIVED}),
    CallState.FAILED: frozenset({CallState.PROCESSING_AI, CallState.ARCHIVED}),
    CallState.ARCHIVED: frozenset(),
}

FINISHED_STATES = frozenset({CallState.COMPLETED, CallState.FAILED, CallState.ARCHIVED})


def can_transition(current: CallState, target: CallState) -> bool:
    return target in _TRANSITIONS[current]


@dataclass(frozen=True)
class TransitionRule:
    """What one allowed move of the state machine does to a call, besides its state.

    Stores translate a rule into one conditional write; they do not decide any of it.
    """

    source: CallState
    target: CallState
    # Every entry into PROCESSING_AI is a new round: a work item acts only on its own
    # round, so a stale or redelivered item can never touch a later round's work.
    starts_round: bool
    # A completed call has no failure to show. A retried call keeps its reason stored
    # (shown only while FAILED), so that the history of why it was retried survives.
    clears_failure_reason: bool


def transition_rule(call_id: str, source: CallState, target: CallState) -> TransitionRule:
    """The rule for ``source`` -> ``target``. Raises InvalidTransitionError when the state machine forbids it."""
    if not can_transition(source, target):
        raise InvalidTransitionError(call_id, source, target)
    return TransitionRule(
        source=source,
        target=target,
        starts_round=target is CallState.PROCESSING_AI,
        clears_failure_reason=target is CallState.COMPLETED,
    )


def is_valid_call_id(call_id: str) -> bool:
    return bool(_CALL_ID_RE.fullmatch(call_id))


# Packet timestamps are kept to the microsecond: finer digits are noise, and stay
# within the number range of every store.
TIMESTAMP_DIGITS = 6


@dataclass(frozen=True)
class Packet:
    sequence: int
    data: str
    timestamp: float
    # The audio format the packet declared ("pcm16/16000"; see callcore.domain.audio), or
    # None: the call's format then comes from its other packets, or the service's default.
    audio_format: str | None = None
    # When the service stored it, as a store reads it back (None before): what the packet
    # statistics order arrivals by. Not part of the packet's identity.
    received_at_ns: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamp", round(self.timestamp, TIMESTAMP_DIGITS))

    def same_content(self, other: Packet) -> bool:
        """A retransmission carries the same audio; its timestamp may differ."""
        return self.data == other.data


@dataclass(frozen=True)
class Arrival:
    """When the service stored one packet, for gap and ordering statistics."""

    sequence: int
    received_at_ns: int


@dataclass(frozen=True)
class PacketStats:
    received: int
    duplicates: int
    out_of_order: int
    highest_sequence: int | None
    missing: list[int]
    missing_count: int

    @classmethod
    def from_arrivals(
        cls,
        arrivals: Iterable[Arrival],
        *,
        duplicates: int = 0,
        last_sequence: int | None = None,
    ) -> PacketStats:
        """Summarise the distinct packets of a call.

        A packet is out of order when it was stored after a packet with a higher
        sequence. ``missing`` holds the absent sequences between the lowest received and
        the highest received, or ``last_sequence`` when the end of the call gave one.
        """
        by_arrival = sorted(arrivals, key=lambda a: (a.received_at_ns, a.sequence))
        out_of_order = 0
        highest: int | None = None
        for arrival in by_arrival:
            if highest is not None and arrival.sequence < highest:
                out_of_order += 1
            highest = arrival.sequence if highest is None else max(highest, arrival.sequence)
        sequences = sorted({a.sequence for a in by_arrival})
        missing, missing_count = _gaps(sequences, last_sequence)
        return cls(
            received=len(sequences),
            duplicates=duplicates,
            out_of_order=out_of_order,
            highest_sequence=highest,
            missing=missing,
            missing_count=missing_count,
        )


def _gaps(sorted_sequences: list[int], last_sequence: int | None) -> tuple[list[int], int]:
    if not sorted_sequences:
        return [], 0
    upper = sorted_sequences[-1] if last_sequence is None else max(sorted_sequences[-1], last_sequence)
    missing: list[int] = []
    count = 0
    expected = sorted_sequences[0]
    for seq in [*sorted_sequences, upper + 1]:
        if seq > expected:
            count += seq - expected
            room = MISSING_LIST_LIMIT - len(missing)
            if room > 0:
                missing.extend(range(expected, min(seq, expected + room)))
        expected = max(expected, seq + 1)
    return missing, count


@dataclass(frozen=True)
class Sentiment:
    label: str
    score: float


# A call's record is one DynamoDB item (400 KB at most, everything included). The
# transcript is the only part that grows with the call; a 10-minute call reads as about
# 10 KB of text, so 100 KB holds well over an hour and leaves room for the rest.
MAX_TRANSCRIPT_BYTES = 100_000
# An attempt's error as kept on the call: enough to diagnose, and small enough that the
# history of hundreds of attempts stays well inside the item.
MAX_ERROR_TEXT = 500


def error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


@dataclass(frozen=True)
class AIResult:
    transcript: str
    sentiment: Sentiment
    transcript_truncated: bool = False

    def bounded(self, max_bytes: int = MAX_TRANSCRIPT_BYTES) -> AIResult:
        """The result as stored on the call: the transcript cut at ``max_bytes`` of UTF-8, and flagged if cut."""
        encoded = self.transcript.encode("utf-8")
        if len(encoded) <= max_bytes:
            return self
        cut = encoded[:max_bytes].decode("utf-8", errors="ignore")
        return AIResult(transcript=cut, sentiment=self.sentiment, transcript_truncated=True)


@dataclass(frozen=True)
class AttemptRecord:
    """One AI attempt, kept on the call so that the history survives an operator retry."""

    round: int
    number: int  # counts every attempt of the call, across rounds
    started_at: str
    error: str | None = None


@dataclass(frozen=True)
class Recording:
    """A call's assembled audio, stored once as a WAV file under ``key`` (callcore.ports.RecordingStore)."""

    key: str
    duration_s: float
    bytes: int


@dataclass(frozen=True)
class Attempt:
    """An AI attempt begun: its number (over all rounds), and its call as the attempt found it
    (the recording and packet statistics an earlier attempt noted, None before)."""

    number: int
    call: Call

    @property
    def recording(self) -> Recording | None:
        return self.call.recording


@dataclass(frozen=True)
class Call:
    call_id: str
    state: CallState
    created_at: str
    updated_at: str
    round: int = 0
    enqueued_round: int = 0  # the last round whose work item is known to be on the queue
    enqueued_at: str | None = None  # when that item was last sent
    duplicates: int = 0
    last_sequence: int | None = None
    ai_attempts: int = 0
    ai_last_error: str | None = None
    transcript: str | None = None
    transcript_truncated: bool = False
    sentiment: Sentiment | None = None
    failure_reason: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    recording: Recording | None = None
    # The packet statistics the worker noted when it first read the call's packets: they no
    # longer change once the call has ended, and outlive the packets (their TTL).
    packet_stats: PacketStats | None = None

    @property
    def reason_for_failure(self) -> str | None:
        """The failure reason while the call is FAILED; a retried call keeps it stored but not shown."""
        return self.failure_reason if self.state is CallState.FAILED else None

    def moved(
        self,
        rule: TransitionRule,
        *,
        now: str,
        last_sequence: int | None = None,
        failure_reason: str | None = None,
        result: AIResult | None = None,
    ) -> Call:
        """The call after ``rule``: what an in-memory store keeps, and what DynamoDB's write produces."""
        reason: str | None = failure_reason
        if reason is None and not rule.clears_failure_reason:
            reason = self.failure_reason
        return replace(
            self,
            state=rule.target,
            updated_at=now,
            round=self.round + 1 if rule.starts_round else self.round,
            last_sequence=self.last_sequence if last_sequence is None else last_sequence,
            failure_reason=reason,
            transcript=result.transcript if result else self.transcript,
            transcript_truncated=result.transcript_truncated if result else self.transcript_truncated,
            sentiment=result.sentiment if result else self.sentiment,
        )


@dataclass(frozen=True)
class WorkItem:
    """The message the end of a call (or an operator retry) puts on the work queue.

    ``round`` counts how many times the call entered PROCESSING_AI. A worker acts on an
    item only while the call is PROCESSING_AI in the same round, so a redelivered or
    stale message never processes a call twice or moves it backwards. (SQS changes the
    messageId on redrive, so idempotency cannot key on it.)

    ``check`` > 0 marks a delayed check of a transcription job that attempt ``attempt``
    started and that was still running: a new message, so that waiting for a job never
    spends the receives (maxReceiveCount) of the item that started it.
    """

    call_id: str
    round: int
    check: int = 0
    attempt: int | None = None

    def next_check(self, attempt: int) -> WorkItem:
        return WorkItem(call_id=self.call_id, round=self.round, check=self.check + 1, attempt=attempt)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"call_id": self.call_id, "round": self.round}
        if self.check:
            body.update(check=self.check, attempt=self.attempt)
        return body

    @classmethod
    def from_json(cls, body: str) -> WorkItem:
        """Parse a queue message body. Raises ValueError for anything but a valid work item."""
        try:
            raw = json.loads(body)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"work item is not JSON: {body[:200]!r}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"work item is not a JSON object: {body[:200]!r}")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WorkItem:
        call_id, round_ = raw.get("call_id"), raw.get("round")
        if not isinstance(call_id, str) or not is_valid_call_id(call_id):
            raise ValueError(f"work item has no valid call_id: {raw!r}")
        if not _positive_int(round_):
            raise ValueError(f"work item has no valid round: {raw!r}")
        check, attempt = raw.get("check", 0), raw.get("attempt")
        if check != 0 and not (_positive_int(check) and _positive_int(attempt)):
            raise ValueError(f"work item has an invalid check or attempt: {raw!r}")
        return cls(call_id=call_id, round=round_, check=check, attempt=attempt if check else None)


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1

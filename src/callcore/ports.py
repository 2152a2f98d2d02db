"""The ports the services need: small interfaces named by role, with AWS adapters behind them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from callcore.domain.model import AIResult, Arrival, Call, CallState, Packet, Sentiment, WorkItem


@dataclass(frozen=True)
class PacketWrite:
    """What happened to one attempt to store a packet.

    ``stored`` is true when the packet is now stored and part of its call. Otherwise
    ``existing`` holds the packet already stored under that sequence, if any, and
    ``call_state`` the call's state when the call no longer accepts packets.
    """

    stored: bool
    existing: Packet | None = None
    call_state: CallState | None = None


@dataclass(frozen=True)
class CallPage:
    calls: list[Call]
    next_cursor: str | None


class CallStore(Protocol):
    def add_packet(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        """Store a packet atomically with its call (created by its first packet), only while IN_PROGRESS."""
        ...

    def count_duplicate(self, call_id: str) -> None: ...

    def transition(
        self,
        call_id: str,
        *,
        source: CallState,
        target: CallState,
        now: str,
        new_round: bool = False,
        expected_round: int | None = None,
        last_sequence: int | None = None,
        failure_reason: str | None = None,
        result: AIResult | None = None,
    ) -> Call:
        """Move the call from ``source`` (in ``expected_round``, if given) to ``target`` in one conditional write.

        Raises CallNotFoundError, or InvalidTransitionError with the current state.
        """
        ...

    def start_attempt(self, call_id: str, round: int, *, now: str) -> int | None:
        """Count one AI attempt, only while the call is PROCESSING_AI in ``round``.

        Returns the attempt's number (over all rounds), or None when the call is not
        PROCESSING_AI in that round: the work item is stale or a duplicate.
        """
        ...

    def record_attempt_error(self, call_id: str, attempt: int, error: str) -> None: ...

    def packets(self, call_id: str) -> list[Packet]:
        """Every stored packet of the call, in sequence order."""
        ...

    def revert_transition(self, call_id: str, *, current: CallState, round: int, back_to: CallState, now: str) -> None:
        """Undo a transition whose follow-up failed, if nothing moved the call since."""
        ...

    def mark_enqueued(self, call_id: str, round: int) -> None:
        """Record that the work item of ``round`` is on the queue."""
        ...

    def get_call(self, call_id: str) -> Call | None: ...

    def arrivals(self, call_id: str) -> list[Arrival]: ...

    def list_calls(self, state: CallState, *, limit: int, cursor: str | None) -> CallPage:
        """Calls in one state, most recently changed first. Raises ValueError for a bad cursor."""
        ...


class WorkQueue(Protocol):
    def send(self, item: WorkItem) -> None: ...


class AIProvider(Protocol):
    """Transcription and sentiment. Raises RetryableAIError or PermanentAIError."""

    async def transcribe(self, call_id: str, packets: list[Packet]) -> str: ...

    async def score_sentiment(self, transcript: str) -> Sentiment: ...

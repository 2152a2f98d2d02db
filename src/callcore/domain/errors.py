"""Domain errors. Entry points map them to HTTP statuses or SQS outcomes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callcore.domain.model import Call, CallState


class CallCoreError(Exception):
    """Base of every error this package raises on purpose."""


class CallNotFoundError(CallCoreError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"call {call_id!r} does not exist")
        self.call_id = call_id


class RecordingNotFoundError(CallCoreError):
    """The call exists but has no recording yet: the worker stores it when AI processing starts."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"call {call_id!r} has no recording yet: it is assembled when the call's AI processing starts")
        self.call_id = call_id


class RecordingExpiredError(CallCoreError):
    """The call noted a recording that its store no longer holds: recordings expire after
    RecordingRetentionDays."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the recording {key!r} is no longer stored: recordings expire after RecordingRetentionDays")
        self.key = key


class SequenceConflictError(CallCoreError):
    """The same sequence arrived again with different data."""

    def __init__(self, call_id: str, sequence: int) -> None:
        super().__init__(
            f"call {call_id!r} already has packet {sequence} with different data; the stored packet is unchanged"
        )
        self.call_id = call_id
        self.sequence = sequence


class CallNotAcceptingPacketsError(CallCoreError):
    """The call has ended: new packets cannot become part of its AI work."""

    def __init__(self, call_id: str, state: CallState) -> None:
        super().__init__(f"call {call_id!r} is {state.value}; it no longer accepts packets")
        self.call_id = call_id
        self.state = state


class InvalidTransitionError(CallCoreError):
    """A state change that the state machine, or the call's current state, does not allow."""

    def __init__(self, call_id: str, current: CallState, target: CallState, call: Call | None = None) -> None:
        super().__init__(f"call {call_id!r} is {current.value}; it cannot move to {target.value}")
        self.call_id = call_id
        self.current = current
        self.target = target
        self.call = call  # the call as the refused write found it, when the store returned it


class DependencyUnavailableError(CallCoreError):
    """A dependency (DynamoDB, SQS) is throttling or unreachable; the caller may retry."""

    def __init__(self, dependency: str, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(f"{dependency} is unavailable: {reason}")
        self.dependency = dependency
        self.reason = reason
        self.retry_after_s = retry_after_s


class DependencyMisconfiguredError(CallCoreError):
    """A dependency says the resource we asked for does not exist: a wrong table or queue name.

    Not "retry later": no retry can succeed until the configuration is fixed.
    """

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} is misconfigured: {reason}")
        self.dependency = dependency
        self.reason = reason


class CallTooLargeError(CallCoreError):
    """A call (or its stored record) is over a documented limit. Retrying cannot help."""


class AIError(CallCoreError):
    """The AI service could not transcribe or score a call."""


class RetryableAIError(AIError):
    """Timeouts, 5xx, throttling: the same request may well succeed later."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PermanentAIError(AIError):
    """The request itself is bad (say, audio that cannot be decoded): retrying cannot help."""


class TranscriptionPendingError(AIError):
    """A transcription job is still running: not a failure. Check again after ``check_after_s``."""

    def __init__(self, message: str, check_after_s: int) -> None:
        super().__init__(message)
        self.check_after_s = check_after_s

"""One translation of AWS SDK failures into domain errors, for every adapter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from callcore.domain.errors import DependencyMisconfiguredError, DependencyUnavailableError

# Error codes that mean "try again later", not "your request is wrong". Some are codes of
# a transaction's CancellationReasons (ProvisionedThroughputExceeded, ThrottlingError,
# TransactionConflict), the others of whole requests.
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ProvisionedThroughputExceeded",
        "ThrottlingException",
        "Throttling",
        "ThrottlingError",
        "RequestThrottled",
        "RequestLimitExceeded",
        "SlowDown",
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "TransactionConflict",
        "TransactionConflictException",
        "TransactionInProgressException",
        "KMS.ThrottlingException",
    }
)

# The table or queue we were configured with does not exist: no retry can help until
# someone fixes the configuration, so this must not read as "try again later".
MISCONFIGURED_CODES = frozenset(
    {"ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NoSuchBucket"}
)


# The latest moment (time.monotonic()) a request may start an SDK call and still be sure
# to finish it inside its function's timeout; None where nothing bounds the request.
_LATEST_CALL_START: ContextVar[float | None] = ContextVar("latest_call_start", default=None)
_clock = time.monotonic


@contextmanager
def request_deadline(budget_s: float, worst_call_s: float) -> Iterator[None]:
    """Within it, an SDK call that might not finish inside ``budget_s`` is refused as unavailable.

    A Lambda that runs past its timeout answers API Gateway nothing, which the client
    sees as a 502: a request whose first writes were slow answers 503 instead, and is
    safe to retry.
    """
    token = _LATEST_CALL_START.set(_clock() + budget_s - worst_call_s)
    try:
        yield
    finally:
        _LATEST_CALL_START.reset(token)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def dependency(name: str) -> Iterator[None]:
    """Turn throttling, outages and connection failures into DependencyUnavailableError."""
    latest = _LATEST_CALL_START.get()
    if latest is not None and _clock() > latest:
        raise DependencyUnavailableError(name, "no time left in this request for another call")
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in MISCONFIGURED_CODES:
            raise DependencyMisconfiguredError(name, code) from exc
        if code in RETRYABLE_CODES or status >= 500:
            raise DependencyUnavailableError(name, code or f"HTTP {status}") from exc
        raise
    except ParamValidationError:
        raise  # our request is malformed: a bug to see, not an outage
    except BotoCoreError as exc:
        raise DependencyUnavailableError(name, type(exc).__name__) from exc

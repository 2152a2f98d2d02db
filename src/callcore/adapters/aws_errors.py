"""One translation of AWS SDK failures into domain errors, for every adapter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def dependency(name: str) -> Iterator[None]:
    """Turn throttling, outages and connection failures into DependencyUnavailableError."""
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

"""The service's metrics: one CloudWatch namespace, written as EMF log lines by Powertools,
dimensioned by function (and Powertools' ``service``).

CloudWatch turns the log lines into metrics with no API call; locally they show in the
logs. The dashboard and alarms in template.yaml read these names.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any

NAMESPACE = "PbxCallProcessor"
SERVICE = "pbx-call-processor"


class Metric(StrEnum):
    PACKETS_ACCEPTED = "PacketsAccepted"
    PACKETS_DUPLICATE = "PacketsDuplicate"
    PACKETS_REFUSED = "PacketsRefused"  # a conflict, or a packet after its call's end
    CALLS_ENDED = "CallsEnded"
    AI_ATTEMPTS = "AiAttempts"
    AI_SUCCESSES = "AiSuccesses"
    AI_RETRYABLE_FAILURES = "AiRetryableFailures"
    AI_PERMANENT_FAILURES = "AiPermanentFailures"
    AI_LATENCY = "AiLatency"  # milliseconds, per attempt
    CALLS_DEAD_LETTERED = "CallsDeadLettered"
    WORK_ITEMS_RESENT = "WorkItemsResent"
    CALLS_PAST_RETRY_HORIZON = "CallsPastRetryHorizon"  # failed by the sweeper: their work item was lost
    CALLS_ARCHIVED = "CallsArchived"


class FunctionMetrics:
    """Metrics of one function, flushed as one EMF line per request or invocation.

    Powertools' ``EphemeralMetrics`` shares no state between instances, so that the local
    stack's functions, which share one process, keep their own ``function`` dimension.
    Powertools is imported on first use: the ingest function's cold start does not pay it
    (as with its boto3 clients, its first request does). Safe to share between threads.
    """

    def __init__(self, function: str) -> None:
        self._function = function
        self._lock = threading.Lock()
        self._emf: Any = None
        self._pending = False

    def count(self, name: Metric, value: int = 1) -> None:
        if value:
            self._add(name, "Count", value)

    def milliseconds(self, name: Metric, value: float) -> None:
        self._add(name, "Milliseconds", value)

    def flush(self) -> None:
        """Write what was added since the last flush as one EMF line (nothing, if nothing was)."""
        with self._lock:
            if self._pending:
                self._emf.flush_metrics()
                self._pending = False

    def _add(self, name: Metric, unit: str, value: float) -> None:
        with self._lock:
            if self._emf is None:
                from aws_lambda_powertools.metrics import EphemeralMetrics

                self._emf = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
                self._emf.set_default_dimensions(function=self._function)
            self._emf.add_metric(name=name.value, unit=unit, value=value)
            self._pending = True

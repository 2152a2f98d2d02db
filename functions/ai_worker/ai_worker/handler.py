"""The AI worker: Lambda handler for the work queue's event source mapping.

The records of a batch run concurrently (Powertools' AsyncBatchProcessor), so a batch
costs about one AI latency. A record that fails for a reason worth retrying is reported
as a batch item failure with its visibility timeout raised by exponential backoff; after
maxReceiveCount receives, the queue's redrive policy moves it to the dead-letter queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from callcore import services
from callcore.adapters.ai.measured import MeasuredAI
from callcore.bootstrap import build_ai_provider, default_ports
from callcore.domain.errors import DependencyUnavailableError, RetryableAIError
from callcore.domain.model import WorkItem
from callcore.domain.retry import backoff_delay
from callcore.metrics import FunctionMetrics
from callcore.ports import AIProvider, CallStore, RecordingStore, WorkQueue
from callcore.settings import Settings

logger = Logger(service="ai-worker")
# The shared package's log lines (callcore.services: resends, lost work items) as this
# function's JSON lines, with their call_id and round as fields.
copy_config_to_registered_loggers(source_logger=logger, include={"callcore"})


@dataclass(frozen=True)
class WorkerDeps:
    settings: Settings
    store: CallStore
    ai: AIProvider
    queue: WorkQueue
    recordings: RecordingStore
    metrics: FunctionMetrics = field(default_factory=lambda: FunctionMetrics("AiWorkerFunction"))


def audio_limits(settings: Settings) -> services.AudioLimits:
    # Decoded PCM is at most twice the packet data read (mu-law doubles, base64 shrinks
    # by a quarter), plus the silence of gaps, which this bound also caps.
    return services.AudioLimits(
        default_format=settings.audio_format,
        max_call_bytes=settings.max_call_bytes,
        max_pcm_bytes=2 * settings.max_call_bytes,
    )


def build_handler(deps: WorkerDeps) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    ai = MeasuredAI(deps.ai, deps.metrics)

    async def record_handler(record: SQSRecord) -> str:
        try:
            item = WorkItem.from_json(record.body)
        except ValueError as exc:
            # No call to act on, and no delivery will ever parse: drop it loudly rather
            # than cycle it through retries and the dead-letter queue.
            logger.error("unreadable work item dropped", extra={"message_id": record.message_id, "error": str(exc)})
            return "unreadable"
        receive_count = int(record.attributes.approximate_receive_count)
        try:
            outcome = await services.process_call(
                deps.store, ai, deps.recordings, deps.queue, item, limits=audio_limits(deps.settings)
            )
        except (RetryableAIError, DependencyUnavailableError) as exc:
            last_try = receive_count >= deps.settings.max_receive_count
            # After the last try, let the redrive happen at once: no point waiting.
            delay = (
                0
                if last_try
                else backoff_delay(receive_count, deps.settings.retry_base_delay_s, deps.settings.retry_max_delay_s)
            )
            logger.warning(
                "AI attempt failed; SQS will retry",
                extra={
                    "call_id": item.call_id,
                    "round": item.round,
                    "check": item.check,
                    "receive_count": receive_count,
                    "retry_in_s": delay,
                    "error": str(exc),
                },
            )
            try:
                await asyncio.to_thread(deps.queue.change_visibility, record.receipt_handle, delay)
            except DependencyUnavailableError:
                logger.warning("could not set the retry delay; the queue's visibility timeout applies")
            raise
        logger.info("work item done", extra={"call_id": item.call_id, "round": item.round, "outcome": outcome.value})
        return outcome.value

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        # A processor per invocation: it holds the batch's state, and the local stack
        # runs several invocations at once, as Lambda's scaling does.
        processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        try:
            return dict(
                async_process_partial_response(
                    event=event, record_handler=record_handler, processor=processor, context=context
                )
            )
        finally:
            deps.metrics.flush()

    return handler


def _default_deps() -> WorkerDeps:
    ports = default_ports()
    return WorkerDeps(
        settings=ports.settings,
        store=ports.store,
        ai=build_ai_provider(ports.settings),
        queue=ports.queue,
        recordings=ports.recordings,
    )


# Built at import, once per sandbox.
lambda_handler = build_handler(_default_deps())

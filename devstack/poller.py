"""Lambda's SQS event source mapping, played in-process for the local stack.

For each SQS event source in template.yaml it receives batches (BatchSize, and the
MaximumBatchingWindowInSeconds to fill them), hands each batch to the same handler
Lambda calls, with the event Lambda sends, and then deletes the records that
succeeded. Reported failures (batchItemFailures) are left for the queue to deliver
again, after whatever visibility timeout the handler set; a handler that raises fails
the whole batch. Up to ScalingConfig.MaximumConcurrency batches run at once, each in
its own thread, like concurrent Lambda sandboxes. Redrive to the dead-letter queue is
the queue's own (moto's), not simulated here.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from devstack.function_logs import run_in
from devstack.provision import Stack
from devstack.template import ScheduleSource, SqsEventSource, sqs_event_sources

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

# Long polling, as Lambda's pollers do; short enough that the stack stops promptly.
LONG_POLL_S = 1
RECEIVE_MAX = 10  # SQS's own cap per ReceiveMessage


@dataclass(frozen=True)
class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def to_lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS message as Lambda's SQS event record carries it."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def failed_message_ids(response: Any, records: list[dict[str, Any]], report_item_failures: bool) -> set[str]:
    """Which records to leave on the queue, by Lambda's rules for the handler's answer."""
    all_ids = {r["messageId"] for r in records}
    if not report_item_failures:
        return set()
    if not isinstance(response, dict) or "batchItemFailures" not in response:
        return set()
    failures = response["batchItemFailures"] or []
    ids = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not item or item not in all_ids:
            return all_ids  # Lambda treats a malformed answer as a failure of the whole batch
        ids.add(item)
    return ids


class SqsPoller:
    def __init__(
        self,
        sqs: Any,
        source: SqsEventSource,
        *,
        queue_url: str,
        queue_arn: str,
        handler: Handler,
        region: str = "us-east-1",
    ) -> None:
        self._sqs = sqs
        self.source = source
        self._url = queue_url
        self._arn = queue_arn
        self._handler = handler
        self._region = region
        self._slots = asyncio.Semaphore(source.maximum_concurrency)
        self._executor = ThreadPoolExecutor(
            max_workers=source.maximum_concurrency + 1, thread_name_prefix=f"esm-{source.function}"
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self.invocations = 0
        # Lambda bills an invocation's handler time: the local stack's cost model reads it.
        self._usage_invocations = 0
        self._usage_records = 0
        self._handler_seconds = 0.0

    def usage(self, *, reset: bool = False) -> dict[str, Any]:
        """Invocations and handler seconds since the last reset (devstack.usage.FunctionClock)."""
        usage = {
            "invocations": self._usage_invocations,
            "records": self._usage_records,
            "seconds": self._handler_seconds,
        }
        if reset:
            self._usage_invocations, self._usage_records, self._handler_seconds = 0, 0, 0.0
        return usage

    @property
    def in_flight(self) -> int:
        """Handler invocations running now."""
        return len(self._inflight)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set, then return once the invocations in flight have.

        Cancelled, it abandons them: their threads run on, their results are dropped.
        """
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                await self._slots.acquire()
                try:
                    batch = await self._next_batch(loop, stop)
                except Exception as exc:
                    self._slots.release()
                    if stop.is_set():
                        # Nothing was received, and the stack is stopping: not worth a traceback.
                        logger.debug(
                            "%s: receiving from %s failed while stopping: %s",
                            self.source.function,
                            self.source.queue,
                            exc,
                        )
                        break
                    logger.exception("%s: receiving from %s failed", self.source.function, self.source.queue)
                    await asyncio.sleep(1)
                    continue
                if not batch:
                    self._slots.release()
                    continue
                task = asyncio.create_task(self._invoke(loop, batch, stop))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
        except asyncio.CancelledError:
            for task in self._inflight:
                task.cancel()
            raise
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        deadline: float | None = None
        while not stop.is_set():
            wanted = min(RECEIVE_MAX, self.source.batch_size - len(batch))
            # Wait for the first message; then only for the rest of the batching window.
            wait = LONG_POLL_S if deadline is None else max(0, min(LONG_POLL_S, round(deadline - time.monotonic())))
            messages = await loop.run_in_executor(self._executor, self._receive, wanted, wait)
            batch += messages
            if len(batch) >= self.source.batch_size:
                return batch
            if batch and deadline is None:
                deadline = time.monotonic() + self.source.batching_window_s
            if deadline is not None and time.monotonic() >= deadline:
                return batch
        return batch

    def _receive(self, count: int, wait_s: int) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    async def _invoke(
        self, loop: asyncio.AbstractEventLoop, messages: list[dict[str, Any]], stop: asyncio.Event
    ) -> None:
        try:
            records = [to_lambda_record(m, self._arn, self._region) for m in messages]
            context = LambdaContext(function_name=self.source.function, aws_request_id=str(uuid.uuid4()))
            self.invocations += 1
            started = time.perf_counter()
            try:
                response = await loop.run_in_executor(
                    self._executor, run_in, self.source.function, self._handler, {"Records": records}, context
                )
            except Exception as exc:
                if stop.is_set():
                    # Whatever it depends on may be stopping too: one line, not a traceback.
                    logger.info(
                        "%s failed on a batch of %d while stopping (%s); all of it goes back",
                        self.source.function,
                        len(records),
                        exc,
                    )
                else:
                    logger.exception(
                        "%s failed on a batch of %d; all of it goes back", self.source.function, len(records)
                    )
                return
            finally:
                # Counted once the handler returned: a reader that sees its records counted
                # also sees every request the handler made.
                self._handler_seconds += time.perf_counter() - started
                self._usage_invocations += 1
                self._usage_records += len(records)
            failed = failed_message_ids(response, records, self.source.report_batch_item_failures)
            done = [r for r in records if r["messageId"] not in failed]
            if done:
                try:
                    await loop.run_in_executor(self._executor, self._delete, done)
                except Exception as exc:
                    if stop.is_set():
                        logger.debug("%s: deleting a batch failed while stopping: %s", self.source.function, exc)
                    else:
                        logger.exception(
                            "%s: could not delete %d done records; they come back after the visibility timeout",
                            self.source.function,
                            len(done),
                        )
        finally:
            self._slots.release()

    def _delete(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            self._sqs.delete_message_batch(
                QueueUrl=self._url,
                Entries=[{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)],
            )


def load_handler(dotted: str) -> Handler:
    """Import a template Handler string (``package.module.function``) as Lambda would."""
    module_name, _, attr = dotted.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module_name), attr)
    return handler


def build_pollers(
    template: dict[str, Any],
    stack: Stack,
    sqs: Any,
    handlers: dict[str, Handler] | None = None,
    region: str = "us-east-1",
) -> list[SqsPoller]:
    """A poller for every SQS event source of the template; ``handlers`` overrides by function name."""
    handlers = handlers or {}
    return [
        SqsPoller(
            sqs,
            source,
            queue_url=stack.queue_urls[source.queue],
            queue_arn=stack.queue_arns[source.queue],
            handler=handlers.get(source.function) or load_handler(source.handler),
            region=region,
        )
        for source in sqs_event_sources(template, stack.parameters)
    ]


async def run_on_schedule(source: ScheduleSource, handler: Handler, stop: asyncio.Event) -> None:
    """Invoke a scheduled function every ``every_s`` seconds, as EventBridge Scheduler would."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), timeout=source.every_s)
            return
        except TimeoutError:
            pass
        event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
        context = LambdaContext(function_name=source.function, aws_request_id=str(uuid.uuid4()))
        try:
            await asyncio.to_thread(run_in, source.function, handler, event, context)
        except Exception:
            logger.exception("%s failed; it runs again in %ss", source.function, source.every_s)

"""The dead-letter queue handler: a work item that used all its receives fails its call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from callcore import services
from callcore.bootstrap import default_ports
from callcore.domain.model import WorkItem
from callcore.metrics import FunctionMetrics, Metric
from callcore.ports import CallStore

logger = Logger(service="dlq-handler")
# The shared package's log lines (callcore.services: resends, lost work items) as this
# function's JSON lines, with their call_id and round as fields.
copy_config_to_registered_loggers(source_logger=logger, include={"callcore"})


def build_handler(
    store: CallStore, metrics: FunctionMetrics | None = None
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    emf = metrics or FunctionMetrics("DlqHandlerFunction")

    def record_handler(record: SQSRecord) -> bool:
        try:
            item = WorkItem.from_json(record.body)
        except ValueError as exc:
            logger.error("unreadable dead letter dropped", extra={"message_id": record.message_id, "error": str(exc)})
            return False
        # A DynamoDB outage raises: the record stays on the dead-letter queue and comes back.
        failed = services.fail_exhausted(store, item)
        emf.count(Metric.CALLS_DEAD_LETTERED, int(failed))
        logger.info("dead letter handled", extra={"call_id": item.call_id, "round": item.round, "failed": failed})
        return failed

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        try:
            return dict(
                process_partial_response(
                    event=event, record_handler=record_handler, processor=processor, context=context
                )
            )
        finally:
            emf.flush()

    return handler


lambda_handler = build_handler(default_ports().store)

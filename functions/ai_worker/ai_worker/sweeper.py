"""Scheduled sweep: no ended call may stay in PROCESSING_AI for good."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from callcore import services
from callcore.bootstrap import default_ports
from callcore.ports import CallStore, WorkQueue
from callcore.settings import Settings

logger = Logger(service="sweeper")


def build_handler(
    store: CallStore, queue: WorkQueue, settings: Settings
) -> Callable[[dict[str, Any], Any], dict[str, int]]:
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        outcome = services.sweep_processing(
            store,
            queue,
            resend_after_s=settings.work_resend_after_s,
            processing_timeout_s=settings.processing_timeout_s,
            give_up_after_s=settings.give_up_after_s(),
        )
        counts = {"resent": outcome.resent, "failed": outcome.failed, "errors": outcome.errors}
        logger.info("sweep done", extra=counts)
        return counts

    return handler


_ports = default_ports()
lambda_handler = build_handler(_ports.store, _ports.queue, _ports.settings)

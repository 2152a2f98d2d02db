"""Scheduled sweep: no ended call may stay in PROCESSING_AI for want of a work item."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from callcore import services
from callcore.bootstrap import default_ports
from callcore.ports import CallStore, WorkQueue

logger = Logger(service="sweeper")


def build_handler(store: CallStore, queue: WorkQueue) -> Callable[[dict[str, Any], Any], dict[str, int]]:
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        resent = services.resend_lost_work(store, queue)
        logger.info("sweep done", extra={"resent": resent})
        return {"resent": resent}

    return handler


_ports = default_ports()
lambda_handler = build_handler(_ports.store, _ports.queue)

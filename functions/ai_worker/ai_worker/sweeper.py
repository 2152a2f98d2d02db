"""Scheduled sweep: no ended call may stay in PROCESSING_AI for good; finished calls are archived in time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from callcore import services
from callcore.bootstrap import default_ports
from callcore.metrics import FunctionMetrics, Metric
from callcore.ports import CallArchive, CallStore, WorkQueue
from callcore.settings import Settings

logger = Logger(service="sweeper")
# The shared package's log lines (callcore.services: resends, lost work items) as this
# function's JSON lines, with their call_id and round as fields.
copy_config_to_registered_loggers(source_logger=logger, include={"callcore"})


def build_handler(
    store: CallStore,
    queue: WorkQueue,
    settings: Settings,
    archive: CallArchive | None = None,
    metrics: FunctionMetrics | None = None,
) -> Callable[[dict[str, Any], Any], dict[str, int]]:
    """The scheduled handler; without ``archive`` it only sweeps (tests of sweeping alone)."""
    emf = metrics or FunctionMetrics("SweeperFunction")

    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        outcome = services.sweep_processing(
            store,
            queue,
            resend_after_s=settings.work_resend_after_s,
            processing_timeout_s=settings.processing_timeout_s,
            give_up_after_s=settings.give_up_after_s(),
        )
        archived = 0
        if archive is not None:
            archived = services.archive_due(store, archive, older_than_s=settings.archive_after_days * 86_400)
        counts = {"resent": outcome.resent, "failed": outcome.failed, "errors": outcome.errors, "archived": archived}
        logger.info("sweep done", extra=counts)
        emf.count(Metric.WORK_ITEMS_RESENT, outcome.resent)
        # A gauge: every sweep counts them again until they are resolved.
        emf.count(Metric.CALLS_PAST_RETRY_HORIZON, outcome.past_horizon)
        emf.count(Metric.CALLS_ARCHIVED, archived)
        emf.flush()
        return counts

    return handler


_ports = default_ports()
lambda_handler = build_handler(_ports.store, _ports.queue, _ports.settings, _ports.archive)

"""WorkQueue on SQS."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from callcore.adapters.aws_errors import dependency

if TYPE_CHECKING:
    from callcore.domain.model import WorkItem

SQSClient = Any


class SQSWorkQueue:
    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send(self, item: WorkItem, *, delay_s: int = 0) -> None:
        with dependency("SQS"):
            self._sqs.send_message(QueueUrl=self._url, MessageBody=json.dumps(item.to_dict()), DelaySeconds=delay_s)

    def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """When SQS may deliver the message again: the retry's backoff."""
        with dependency("SQS"):
            self._sqs.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=receipt_handle, VisibilityTimeout=timeout_s
            )

"""Pure parts of the local stack: the Lambda SQS record shape, Lambda's rules for a
handler's batch answer, and the event sources read from the real template.yaml."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.poller import failed_message_ids, to_lambda_record
from devstack.template import (
    ScheduleSource,
    SqsEventSource,
    load_template,
    parameter_defaults,
    schedule_sources,
    sqs_event_sources,
)

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:WorkQueue"


def sqs_message(message_id: str = "m-1", receive_count: int = 1, **extra: Any) -> dict[str, Any]:
    """A message as SQS ReceiveMessage returns it (with MessageSystemAttributeNames=All)."""
    return {
        "MessageId": message_id,
        "ReceiptHandle": f"receipt-{message_id}",
        "MD5OfBody": "5d41402abc4b2a76b9719d911017c592",
        "Body": '{"call_id": "c1", "round": 1}',
        "Attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": "1704067200000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1704067200001",
        },
        **extra,
    }


def records(*ids: str) -> list[dict[str, Any]]:
    return [to_lambda_record(sqs_message(i), QUEUE_ARN, "us-east-1") for i in ids]


# --- to_lambda_record -------------------------------------------------------------------


def test_lambda_record_has_exactly_the_keys_lambda_sends() -> None:
    record = to_lambda_record(sqs_message(), QUEUE_ARN, "eu-west-1")

    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }


def test_lambda_record_carries_the_message_its_queue_and_region() -> None:
    record = to_lambda_record(sqs_message("m-7", receive_count=3), QUEUE_ARN, "eu-west-1")

    assert record["messageId"] == "m-7"
    assert record["receiptHandle"] == "receipt-m-7"
    assert record["body"] == '{"call_id": "c1", "round": 1}'
    assert record["md5OfBody"] == "5d41402abc4b2a76b9719d911017c592"
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == QUEUE_ARN
    assert record["awsRegion"] == "eu-west-1"
    assert record["messageAttributes"] == {}


def test_lambda_record_attributes_include_the_approximate_receive_count_as_a_string() -> None:
    record = to_lambda_record(sqs_message(receive_count=4), QUEUE_ARN, "us-east-1")

    assert record["attributes"]["ApproximateReceiveCount"] == "4"
    assert record["attributes"]["SentTimestamp"] == "1704067200000"


def test_lambda_record_maps_message_attributes_to_lambdas_camel_case() -> None:
    message = sqs_message(MessageAttributes={"source": {"StringValue": "pbx-7", "DataType": "String"}})

    record = to_lambda_record(message, QUEUE_ARN, "us-east-1")

    assert record["messageAttributes"] == {
        "source": {
            "stringValue": "pbx-7",
            "binaryValue": None,
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        }
    }


def test_lambda_record_is_read_by_powertools_as_an_sqs_record() -> None:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    record = SQSRecord(to_lambda_record(sqs_message("m-9", receive_count=2), QUEUE_ARN, "us-east-1"))

    assert record.message_id == "m-9"
    assert record.receipt_handle == "receipt-m-9"
    assert record.attributes.approximate_receive_count == "2"
    assert record.event_source_arn == QUEUE_ARN


# --- failed_message_ids -----------------------------------------------------------------


def test_reported_failures_are_the_records_left_on_the_queue() -> None:
    batch = records("a", "b", "c")
    response = {"batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "c"}]}

    assert failed_message_ids(response, batch, report_item_failures=True) == {"b", "c"}


def test_without_report_batch_item_failures_the_answer_is_ignored_and_nothing_is_left() -> None:
    batch = records("a", "b")
    response = {"batchItemFailures": [{"itemIdentifier": "b"}]}

    assert failed_message_ids(response, batch, report_item_failures=False) == set()


@pytest.mark.parametrize(
    "response",
    [None, {}, {"other": 1}, {"batchItemFailures": []}, {"batchItemFailures": None}],
    ids=["null", "empty", "missing-key", "empty-list", "null-list"],
)
def test_an_answer_without_failures_means_the_whole_batch_succeeded(response: Any) -> None:
    assert failed_message_ids(response, records("a", "b"), report_item_failures=True) == set()


@pytest.mark.parametrize(
    "failure",
    [{"itemIdentifier": "zzz"}, {"itemIdentifier": ""}, {"itemIdentifier": None}, {"wrongKey": "a"}, "a"],
    ids=["unknown-id", "empty-id", "null-id", "bad-key", "not-an-object"],
)
def test_a_malformed_failure_fails_the_whole_batch(failure: Any) -> None:
    batch = records("a", "b", "c")
    response = {"batchItemFailures": [{"itemIdentifier": "a"}, failure]}

    assert failed_message_ids(response, batch, report_item_failures=True) == {"a", "b", "c"}


# --- template.yaml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def by_queue(template: dict[str, Any]) -> dict[str, SqsEventSource]:
    sources = sqs_event_sources(template)
    found = {s.queue: s for s in sources}
    assert len(found) == len(sources), "one event source per queue"
    return found


def test_template_has_an_sqs_event_source_for_the_work_queue_and_the_dead_letter_queue(
    template: dict[str, Any],
) -> None:
    assert set(by_queue(template)) == {"WorkQueue", "DeadLetterQueue"}


@pytest.mark.parametrize(
    ("provider", "batch_size", "concurrency"),
    [
        # CPU-bound in the worker: one call per invocation, more invocations at once.
        ("local", 1, 100),
        ("aws", 10, 10),
        ("mock", 10, 10),
    ],
)
def test_work_queue_feeds_the_ai_worker_with_partial_failures_in_batches_sized_for_the_provider(
    template: dict[str, Any], provider: str, batch_size: int, concurrency: int
) -> None:
    params = parameter_defaults(template) | {"AiProvider": provider}
    [source] = [s for s in sqs_event_sources(template, params) if s.queue == "WorkQueue"]

    assert source == SqsEventSource(
        function="AiWorkerFunction",
        handler="ai_worker.handler.lambda_handler",
        queue="WorkQueue",
        batch_size=batch_size,
        batching_window_s=0.0,
        report_batch_item_failures=True,
        maximum_concurrency=concurrency,
    )


def test_dead_letter_queue_feeds_the_dlq_handler_with_partial_failures(template: dict[str, Any]) -> None:
    source = by_queue(template)["DeadLetterQueue"]

    assert source.function == "DlqHandlerFunction"
    assert source.handler == "ai_worker.dlq.lambda_handler"
    assert source.batch_size == 10
    assert source.report_batch_item_failures is True


def test_work_queue_visibility_timeout_is_at_least_six_times_the_worker_timeout(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    visibility = int(resources["WorkQueue"]["Properties"]["VisibilityTimeout"])
    worker = resources["AiWorkerFunction"]["Properties"]
    timeout = int(worker.get("Timeout", template.get("Globals", {}).get("Function", {}).get("Timeout", 3)))

    assert visibility >= 6 * timeout


def test_sweeper_runs_every_sixty_seconds(template: dict[str, Any]) -> None:
    assert schedule_sources(template) == [
        ScheduleSource(function="SweeperFunction", handler="ai_worker.sweeper.lambda_handler", every_s=60)
    ]


def test_template_handlers_are_importable_functions(template: dict[str, Any]) -> None:
    from devstack.poller import load_handler

    handlers = [s.handler for s in sqs_event_sources(template)] + [s.handler for s in schedule_sources(template)]

    assert all(callable(load_handler(h)) for h in handlers)


def test_a_schedule_that_is_not_a_rate_is_refused() -> None:
    template = {
        "Resources": {
            "Fn": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "Handler": "m.h",
                    "Events": {"E": {"Type": "Schedule", "Properties": {"Schedule": "cron(0 * * * ? *)"}}},
                },
            }
        }
    }

    with pytest.raises(ValueError, match="rate"):
        schedule_sources(template)


@pytest.mark.parametrize(("expression", "seconds"), [("rate(5 minutes)", 300), ("rate(2 hours)", 7200)])
def test_schedule_rates_convert_to_seconds(expression: str, seconds: int) -> None:
    template = {
        "Resources": {
            "Fn": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "Handler": "m.h",
                    "Events": {"E": {"Type": "Schedule", "Properties": {"Schedule": expression}}},
                },
            }
        }
    }

    assert [s.every_s for s in schedule_sources(template)] == [seconds]

"""Pure parts of the local stack: the Lambda SQS record shape, Lambda's rules for a
handler's batch answer, the event sources read from the real template.yaml, and how a
poller behaves while the stack stops (over a scripted SQS client)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from devstack.poller import Handler, SqsPoller, failed_message_ids, to_lambda_record
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


# --- stopping ---------------------------------------------------------------------------

WORK_SOURCE = SqsEventSource(
    function="AiWorkerFunction",
    handler="ai_worker.handler.lambda_handler",
    queue="WorkQueue",
    batch_size=10,
    batching_window_s=0.0,
    report_batch_item_failures=True,
    maximum_concurrency=2,
)
CONNECTION_ERROR = EndpointConnectionError(endpoint_url="http://127.0.0.1:5000/")


class ScriptedSqs:
    """An SQS client whose ReceiveMessage answers what ``receive`` returns (or raises)."""

    def __init__(self, receive: Callable[[], list[dict[str, Any]]]) -> None:
        self._receive = receive
        self.deleted: list[str] = []

    def receive_message(self, **request: Any) -> dict[str, Any]:
        return {"Messages": self._receive()}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.deleted += [entry["ReceiptHandle"] for entry in Entries]
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries]}


def work_poller(sqs: ScriptedSqs, handler: Handler) -> SqsPoller:
    return SqsPoller(sqs, WORK_SOURCE, queue_url="queue-url", queue_arn=QUEUE_ARN, handler=handler)


def messages_once(*messages: dict[str, Any]) -> Callable[[], list[dict[str, Any]]]:
    """``messages`` on the first ReceiveMessage, nothing after."""
    batches = iter([list(messages)])
    return lambda: next(batches, [])


class BlockingHandler:
    """A handler that stays in flight until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.entered.set()
        assert self.release.wait(30)
        return {"batchItemFailures": []}


def poller_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name in ("devstack.poller", "devstack")]


def test_a_connection_error_while_running_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        answers = iter([CONNECTION_ERROR])

        def receive() -> list[dict[str, Any]]:
            if (error := next(answers, None)) is not None:
                raise error
            loop.call_soon_threadsafe(stop.set)  # the poller tried again: enough
            return []

        await asyncio.wait_for(work_poller(ScriptedSqs(receive), BlockingHandler()).run(stop), 10)

    asyncio.run(scenario())

    [record] = [r for r in poller_records(caplog) if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "AiWorkerFunction: receiving from WorkQueue failed"
    assert record.exc_info is not None and record.exc_info[1] is CONNECTION_ERROR


def test_a_connection_error_while_stopping_is_one_quiet_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="devstack.poller")

    async def scenario() -> None:
        stop, receiving, moto_gone = asyncio.Event(), threading.Event(), threading.Event()

        def receive() -> list[dict[str, Any]]:
            receiving.set()
            assert moto_gone.wait(10)
            raise CONNECTION_ERROR

        run = asyncio.create_task(work_poller(ScriptedSqs(receive), BlockingHandler()).run(stop))
        assert await asyncio.to_thread(receiving.wait, 10)
        stop.set()
        moto_gone.set()  # the long poll in flight fails once the stack is stopping
        await asyncio.wait_for(run, 10)

    asyncio.run(scenario())

    records = poller_records(caplog)
    assert len(records) == 1
    assert records[0].levelno <= logging.INFO and records[0].exc_info is None
    assert "while stopping" in records[0].getMessage()


def test_a_stopping_poller_lets_the_invocation_in_flight_finish_and_deletes_its_records() -> None:
    handler = BlockingHandler()
    sqs = ScriptedSqs(messages_once(sqs_message("m-1")))

    async def scenario() -> None:
        stop = asyncio.Event()
        poller = work_poller(sqs, handler)
        run = asyncio.create_task(poller.run(stop))
        assert await asyncio.to_thread(handler.entered.wait, 10)
        stop.set()
        assert poller.in_flight == 1 and not run.done()
        handler.release.set()
        await asyncio.wait_for(run, 10)
        assert poller.in_flight == 0

    asyncio.run(scenario())

    assert sqs.deleted == ["receipt-m-1"]


@pytest.mark.parametrize("hurry", [False, True], ids=["drain-runs-out", "ctrl-c-again"])
def test_the_stack_abandons_invocations_still_in_flight_after_the_drain_or_a_second_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, hurry: bool
) -> None:
    import devstack.__main__ as devstack_main

    monkeypatch.setattr(devstack_main, "DRAIN_S", 0.2 if not hurry else 30)
    caplog.set_level(logging.INFO, logger="devstack")
    handler = BlockingHandler()
    sqs = ScriptedSqs(messages_once(sqs_message("m-1")))

    async def scenario() -> bool:
        stop, hurried = asyncio.Event(), asyncio.Event()
        poller = work_poller(sqs, handler)
        run = asyncio.create_task(poller.run(stop))
        assert await asyncio.to_thread(handler.entered.wait, 10)
        if hurry:
            hurried.set()
        abandoned = await asyncio.wait_for(devstack_main._stop_pollers([run], [poller], stop, hurried), 10)
        assert run.cancelled()
        return abandoned

    try:
        assert asyncio.run(scenario()) is True
    finally:
        handler.release.set()

    messages = [r.getMessage() for r in poller_records(caplog)]
    why = "Ctrl-C again" if hurry else "still running after 0.2 s"
    assert messages[-2:] == [f"pollers: abandoning 1 handler invocation(s) in flight ({why})", "pollers stopped"]
    assert all(r.exc_info is None for r in poller_records(caplog))
    assert sqs.deleted == []  # left on the queue, as Lambda leaves a batch whose sandbox ended

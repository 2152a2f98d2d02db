"""The AI half of the pipeline, end to end: the ingest app, the real worker and DLQ
handlers, driven by the local stack's pollers from a moto server's queues, whose redrive
policy (from template.yaml, maxReceiveCount 3) moves exhausted work items to the DLQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ai_worker import dlq
from ai_worker.handler import WorkerDeps, build_handler
from callcore.adapters.ai.mock import MockAIProvider
from callcore.bootstrap import AwsClients, Ports, build_clients, build_ports
from callcore.domain.audio import CallAudio
from callcore.domain.errors import RetryableAIError
from callcore.domain.model import Sentiment, WorkItem
from devstack.poller import build_pollers, to_lambda_record
from devstack.template import load_template
from tests.conftest import LiveServer, MotoStack, start_moto_stack
from tests.integration.helpers import RunningStack, b64, packet

MAX_RECEIVES = 3
FINAL = {"COMPLETED", "FAILED"}
# Long enough for ten records' reads on a loaded machine; a serial worker waits it out and fails.
BARRIER_TIMEOUT_S = 20.0


class SwitchableAI:
    """The mock provider, whose failure rate a test can change while the pipeline runs,
    and which records when each transcription ran."""

    reads_recording = False

    def __init__(self, failure_rate: float, latency_s: float = 0.02, seed: int | None = 7) -> None:
        self.latency_s = latency_s
        self.seed = seed
        self.intervals: list[tuple[float, float]] = []
        self.set_failure_rate(failure_rate)

    def set_failure_rate(self, rate: float) -> None:
        self._mock = MockAIProvider(rate, self.latency_s, self.latency_s, seed=self.seed)

    async def transcribe(self, audio: CallAudio) -> str:
        start = time.monotonic()
        try:
            return await self._mock.transcribe(audio)
        finally:
            self.intervals.append((start, time.monotonic()))

    async def score_sentiment(self, transcript: str) -> Sentiment:
        return await self._mock.score_sentiment(transcript)


@dataclass
class Pipeline:
    stack: MotoStack
    ports: Ports
    clients: AwsClients
    api: httpx.Client
    ai: SwitchableAI = field(default_factory=lambda: SwitchableAI(0.0))

    def end_call(self, call_id: str, packets: int = 3, data: Callable[[int], str] | None = None) -> None:
        for seq in range(packets):
            body = packet(seq, data=data(seq) if data else None)
            assert self.api.post(f"/v1/call/stream/{call_id}", json=body).status_code == 202
        assert self.api.post(f"/v1/call/{call_id}/end").status_code == 202

    def call(self, call_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/call/{call_id}")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    def wait_for_states(
        self, call_ids: list[str], states: set[str], timeout_s: float = 60
    ) -> dict[str, dict[str, Any]]:
        """Poll until every call is in one of ``states``; fail with the stragglers on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            calls = {cid: self.call(cid) for cid in call_ids}
            pending = {cid: c["state"] for cid, c in calls.items() if c["state"] not in states}
            if not pending:
                return calls
            if time.monotonic() > deadline:
                pytest.fail(f"calls still not in {states}: {pending}")
            time.sleep(0.05)

    def queue_is_empty(self, logical_name: str) -> bool:
        attrs = self.clients.sqs.get_queue_attributes(
            QueueUrl=self.stack.stack.queue_urls[logical_name],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


@pytest.fixture(scope="module")
def pipeline_stack() -> Iterator[MotoStack]:
    ms = start_moto_stack({"MAX_RECEIVE_COUNT": str(MAX_RECEIVES)})
    try:
        yield ms
    finally:
        ms.moto.stop()


@pytest.fixture
def pipeline(pipeline_stack: MotoStack) -> Iterator[Pipeline]:
    settings = pipeline_stack.settings(MAX_RECEIVE_COUNT=MAX_RECEIVES, RETRY_BASE_DELAY_S=0, RETRY_MAX_DELAY_S=0)
    clients = build_clients(endpoint_url=pipeline_stack.moto.endpoint)
    ports = build_ports(settings, clients)
    from ingest.app import create_app

    with LiveServer(create_app(ports)) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        pipe = Pipeline(stack=pipeline_stack, ports=ports, clients=clients, api=api)
        deps = WorkerDeps(
            settings=settings, store=ports.store, ai=pipe.ai, queue=ports.queue, recordings=ports.recordings
        )
        handlers = {"AiWorkerFunction": build_handler(deps), "DlqHandlerFunction": dlq.build_handler(ports.store)}
        pollers = build_pollers(load_template(), pipeline_stack.stack, clients.sqs, handlers)
        with RunningStack(pollers):
            yield pipe


def test_a_call_completes_with_one_attempt_when_the_ai_never_fails(pipeline: Pipeline, call_id: str) -> None:
    pipeline.end_call(call_id, data=lambda seq: b64(["thanks", "great", "service"][seq]))
    call = pipeline.wait_for_states([call_id], FINAL)[call_id]
    assert call["state"] == "COMPLETED"
    assert call["ai"]["attempts"] == 1
    assert call["ai"]["transcript"] == "thanks great service"
    assert call["ai"]["sentiment"]["label"] == "POSITIVE"
    assert call["failure_reason"] is None


def test_an_always_failing_ai_fails_the_call_through_the_dlq_after_max_receives(
    pipeline: Pipeline, call_id: str
) -> None:
    pipeline.ai.set_failure_rate(1.0)
    pipeline.end_call(call_id)
    call = pipeline.wait_for_states([call_id], FINAL)[call_id]
    assert call["state"] == "FAILED"
    assert call["ai"]["attempts"] == MAX_RECEIVES
    assert call["failure_reason"].startswith(f"AI processing gave up after all retries ({MAX_RECEIVES} attempts")
    assert "HTTP 503" in call["failure_reason"]
    assert [h["error"] is not None for h in call["ai"]["history"]] == [True] * MAX_RECEIVES


def test_a_non_retryable_error_fails_the_call_at_once(pipeline: Pipeline, call_id: str) -> None:
    pipeline.end_call(call_id, data=lambda seq: "sample_audio_chunk" if seq == 1 else b64("ok"))
    call = pipeline.wait_for_states([call_id], FINAL)[call_id]
    assert call["state"] == "FAILED"
    assert call["ai"]["attempts"] == 1
    assert "packet 1 is not base64 mulaw audio" in call["failure_reason"]
    assert pipeline.ai.intervals == []  # the AI was never asked


def test_operator_retry_of_a_failed_call_completes_it_once_the_ai_recovers(pipeline: Pipeline, call_id: str) -> None:
    pipeline.ai.set_failure_rate(1.0)
    pipeline.end_call(call_id)
    assert pipeline.wait_for_states([call_id], FINAL)[call_id]["state"] == "FAILED"
    pipeline.ai.set_failure_rate(0.0)

    retried = pipeline.api.post(f"/v1/call/{call_id}/retry")

    assert retried.status_code == 202, retried.text
    assert retried.json() == {"call_id": call_id, "state": "PROCESSING_AI"}
    call = pipeline.wait_for_states([call_id], FINAL)[call_id]
    assert call["state"] == "COMPLETED"
    assert call["failure_reason"] is None
    assert call["ai"]["attempts"] == MAX_RECEIVES + 1
    assert [h["round"] for h in call["ai"]["history"]] == [1] * MAX_RECEIVES + [2]
    assert pipeline.api.post(f"/v1/call/{call_id}/retry").status_code == 409


def test_retry_of_an_unknown_or_unfailed_call_is_refused(pipeline: Pipeline, call_id: str) -> None:
    assert pipeline.api.post(f"/v1/call/{call_id}/retry").status_code == 404
    pipeline.api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    refused = pipeline.api.post(f"/v1/call/{call_id}/retry")
    assert refused.status_code == 409
    assert "IN_PROGRESS" in refused.json()["message"]


def test_a_duplicated_message_for_a_completed_call_changes_nothing(pipeline: Pipeline, call_id: str) -> None:
    pipeline.end_call(call_id)
    before = pipeline.wait_for_states([call_id], FINAL)[call_id]
    assert before["state"] == "COMPLETED"

    pipeline.ports.queue.send(WorkItem(call_id=call_id, round=1))  # SQS delivers it again
    deadline = time.monotonic() + 30
    while not pipeline.queue_is_empty("WorkQueue"):
        assert time.monotonic() < deadline, "the duplicate was never consumed"
        time.sleep(0.05)

    assert pipeline.call(call_id) == before


def test_thirty_calls_at_the_default_failure_rate_all_finish(pipeline: Pipeline, call_id: str) -> None:
    pipeline.ai.set_failure_rate(0.25)
    ids = [f"{call_id}-{i}" for i in range(30)]
    for cid in ids:
        pipeline.end_call(cid, packets=2)
    calls = pipeline.wait_for_states(ids, FINAL, timeout_s=120)
    states = [c["state"] for c in calls.values()]
    assert set(states) <= FINAL
    assert all(c["failure_reason"] for c in calls.values() if c["state"] == "FAILED")
    assert all(1 <= c["ai"]["attempts"] <= MAX_RECEIVES for c in calls.values())


def _received_batch(pipeline: Pipeline, expected: int) -> dict[str, Any]:
    """Receive ``expected`` work items from moto and shape them as Lambda's event."""
    url, arn = pipeline.stack.stack.queue_urls["WorkQueue"], pipeline.stack.stack.queue_arns["WorkQueue"]
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(messages) < expected and time.monotonic() < deadline:
        response = pipeline.clients.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        messages += response.get("Messages", [])
    assert len(messages) == expected
    return {"Records": [to_lambda_record(m, arn, "us-east-1") for m in messages]}


@pytest.fixture
def idle_stack(pipeline_stack: MotoStack) -> Iterator[Pipeline]:
    """The pipeline's stack with no pollers, so a test can invoke the worker by hand."""
    settings = pipeline_stack.settings(MAX_RECEIVE_COUNT=MAX_RECEIVES, RETRY_BASE_DELAY_S=30, RETRY_MAX_DELAY_S=30)
    clients = build_clients(endpoint_url=pipeline_stack.moto.endpoint)
    ports = build_ports(settings, clients)
    from ingest.app import create_app

    with LiveServer(create_app(ports)) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        yield Pipeline(stack=pipeline_stack, ports=ports, clients=clients, api=api)


class RecordingQueue:
    """The real SQS queue, noting each visibility change the worker makes."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self.visibility_changes: list[tuple[str, int]] = []

    def send(self, item: WorkItem, *, delay_s: int = 0) -> None:
        self._queue.send(item, delay_s=delay_s)

    def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        self._queue.change_visibility(receipt_handle, timeout_s)
        self.visibility_changes.append((receipt_handle, timeout_s))


class OneCallFails(SwitchableAI):
    """Fails one call's transcription; every transcription first waits until `together`
    of them have started, so a worker that ran its records one by one would time out
    here instead of passing on a fast machine (and a slow one cannot fail a concurrent
    worker: the records' DynamoDB reads before the AI take as long as moto needs)."""

    def __init__(self, failing_call: str, together: int) -> None:
        super().__init__(0.0, latency_s=0.0)
        self.failing_call = failing_call
        self.started = 0
        self._all_started = asyncio.Barrier(together)
        # One deadline for the batch, so a serial worker fails in one timeout, not ten.
        self._deadline = time.monotonic() + BARRIER_TIMEOUT_S

    async def transcribe(self, audio: CallAudio) -> str:
        self.started += 1
        await asyncio.wait_for(self._all_started.wait(), timeout=max(0.0, self._deadline - time.monotonic()))
        text = await super().transcribe(audio)
        if audio.call_id == self.failing_call:
            raise RetryableAIError("HTTP 503 from the AI service", status=503)
        return text


def test_a_batch_reports_exactly_its_failing_record_and_runs_its_records_concurrently(
    idle_stack: Pipeline, call_id: str
) -> None:
    ids = [f"{call_id}-{i}" for i in range(10)]
    for cid in ids:
        idle_stack.end_call(cid, packets=1)
    event = _received_batch(idle_stack, 10)
    ai = OneCallFails(failing_call=ids[4], together=len(ids))
    settings = idle_stack.ports.settings
    queue = RecordingQueue(idle_stack.ports.queue)
    deps = WorkerDeps(
        settings=settings, store=idle_stack.ports.store, ai=ai, queue=queue, recordings=idle_stack.ports.recordings
    )
    handler = build_handler(deps)

    response = handler(event, None)

    failing = next(r["messageId"] for r in event["Records"] if ids[4] in r["body"])
    assert response == {"batchItemFailures": [{"itemIdentifier": failing}]}
    # All ten AI calls were in flight at the same moment (the barrier let them through).
    assert ai.started == 10
    assert len(ai.intervals) == 10
    states = {cid: idle_stack.call(cid)["state"] for cid in ids}
    assert states == {cid: "PROCESSING_AI" if cid == ids[4] else "COMPLETED" for cid in ids}
    # The failed record's visibility was set, on the real queue, to a backoff of 0 to 30 s
    # (full jitter); while it lasts, the record cannot be received.
    failing_handle = next(r["receiptHandle"] for r in event["Records"] if r["messageId"] == failing)
    [(handle, delay)] = queue.visibility_changes
    assert handle == failing_handle
    assert 0 <= delay <= 30
    if delay >= 1:
        again = idle_stack.clients.sqs.receive_message(QueueUrl=idle_stack.stack.stack.queue_urls["WorkQueue"])
        assert again.get("Messages", []) == []

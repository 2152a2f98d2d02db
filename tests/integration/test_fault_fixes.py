"""Defects that only the faults of real AWS reach, each with the interleaving that reached it.

Each test names the interleaving in its name and its GIVEN/WHEN/THEN, runs the real app
and adapters against a moto server, and failed before its fix.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber

from ai_worker import sweeper
from ai_worker.handler import audio_limits
from callcore import services
from callcore.adapters import aws_errors
from callcore.adapters.dynamodb_store import ARRIVAL_INDEX, DynamoDBCallStore
from callcore.bootstrap import CLIENT_CONFIG, AwsClients, Ports, build_clients, build_ports
from callcore.clock import iso_seconds_ago
from callcore.domain.errors import DependencyUnavailableError
from callcore.domain.model import MAX_SEQUENCE, MAX_TRANSCRIPT_BYTES, CallState, Packet, WorkItem, transition_rule
from callcore.ports import WorkQueue
from tests.conftest import LiveServer, MotoStack, start_moto_stack
from tests.fakes import FakeAIProvider
from tests.integration.helpers import drain_queue, packet


def process(
    ports: Ports, ai: FakeAIProvider, item: WorkItem, *, max_call_bytes: int | None = None
) -> Coroutine[Any, Any, services.ProcessOutcome]:
    """The worker's use case on the real adapters, with the worker's limits (or a smaller byte limit)."""
    limits = audio_limits(ports.settings)
    if max_call_bytes is not None:
        limits = replace(limits, max_call_bytes=max_call_bytes)
    return services.process_call(ports.store, ai, ports.recordings, ports.queue, item, limits=limits)


class HangingQueue:
    """SQS that takes a send in, hangs until released, then fails: a send timing out."""

    def __init__(self, real: WorkQueue) -> None:
        self._real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(self, item: WorkItem, *, delay_s: int = 0) -> None:
        self.entered.set()
        assert self.release.wait(timeout=30)
        raise DependencyUnavailableError("SQS", "ReadTimeoutError")

    def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        self._real.change_visibility(receipt_handle, timeout_s)


# ---------------------------------------------------------------- item 1


def test_end_a_wins_its_send_hangs_then_fails_while_end_b_gets_202_and_the_call_still_gets_its_work_item(
    ports: Ports, api: httpx.Client, aws_clients: AwsClients, call_id: str
) -> None:
    # GIVEN an app whose SQS send hangs, then fails
    hanging = HangingQueue(ports.queue)
    from ingest.app import create_app

    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    with LiveServer(create_app(replace(ports, queue=hanging))) as server:
        answers: dict[str, httpx.Response] = {}

        def end_a() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                answers["A"] = client.post(f"/v1/call/{call_id}/end")

        a = threading.Thread(target=end_a)
        # WHEN end A wins the transition and hangs in its send
        a.start()
        assert hanging.entered.wait(timeout=30)
        # ... end B (the PBX retrying) sees PROCESSING_AI
        answers["B"] = api.post(f"/v1/call/{call_id}/end")
        # ... and then A's send fails
        hanging.release.set()
        a.join(timeout=30)
    # THEN both ends were accepted, and the call did not go back to IN_PROGRESS
    assert answers["B"].status_code == 202
    assert answers["A"].status_code == 202
    call = ports.store.get_call(call_id)
    assert call is not None
    assert (call.state, call.round, call.enqueued_round) == (CallState.PROCESSING_AI, 1, 0)
    # ... and the sweeper sends the work item both 202s promised, once
    sweep = sweeper.build_handler(ports.store, ports.queue, replace(ports.settings, work_resend_after_s=1.0))
    _age_round(ports, call_id, seconds=5)
    sweep({}, None)
    items = [b for b in drain_queue(aws_clients, ports.settings.work_queue_url) if b["call_id"] == call_id]
    assert items == [{"call_id": call_id, "round": 1}]


def _age_round(ports: Ports, call_id: str, *, seconds: float) -> None:
    """Move the call's clocks back, as if its round began (and its item was sent) ``seconds`` ago.

    updated_at is the by-state index's sort key, so the index moves too.
    """
    old = iso_seconds_ago(seconds)
    store = ports.store
    assert isinstance(store, DynamoDBCallStore)
    call = store.get_call(call_id)
    assert call is not None
    update = "SET updated_at = :old" + (", enqueued_at = :old" if call.enqueued_at else "")
    store._ddb.update_item(
        TableName=ports.settings.calls_table,
        Key={"call_id": {"S": call_id}},
        UpdateExpression=update,
        ExpressionAttributeValues={":old": {"S": old}},
    )


# ---------------------------------------------------------------- item 2


@pytest.fixture
def stubbed_store(ports: Ports) -> Iterator[tuple[DynamoDBCallStore, Stubber]]:
    """The DynamoDB store over a client whose answers a test scripts exactly as AWS shapes them."""
    real = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1").client(
        "dynamodb", config=CLIENT_CONFIG
    )
    stubber = Stubber(real)
    with stubber:
        yield (
            DynamoDBCallStore(
                real,
                ports.settings.calls_table,
                ports.settings.packets_table,
                ports.settings.slots_table,
                packet_ttl_s=ports.settings.packet_ttl_s(),
            ),
            stubber,
        )


def _cancelled(reasons: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "service_error_code": "TransactionCanceledException",
        "service_message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
        "http_status_code": 400,
        "response_meta": {},
        "modeled_fields": {"CancellationReasons": reasons},
    }


def test_a_stored_packet_sent_again_while_another_packet_holds_the_call_item_is_retried_not_a_500(
    stubbed_store: tuple[DynamoDBCallStore, Stubber],
) -> None:
    store, stubber = stubbed_store
    stored = {"call_id": {"S": "c1"}, "sequence": {"N": "5"}, "data": {"S": "a"}, "timestamp": {"N": "1"}}
    # GIVEN packet 5 is stored, and another packet's transaction holds the call item:
    # DynamoDB cancels with [ConditionalCheckFailed (packet), TransactionConflict (call)]
    stubber.add_client_error(
        "transact_write_items",
        **_cancelled(
            [
                {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed", "Item": stored},
                {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
            ]
        ),
    )
    # ... and once the other transaction is over, the same request finds only the packet
    stubber.add_client_error(
        "transact_write_items",
        **_cancelled(
            [
                {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed", "Item": stored},
                {"Code": "None"},
            ]
        ),
    )
    # WHEN the packet arrives again
    write = store.add_packet("c1", Packet(5, "a", 1.0), now="2026-01-01T00:00:00.000000Z", received_at_ns=1)
    # THEN it is a duplicate of the stored packet, not an unhandled error
    assert (write.stored, write.existing) == (False, Packet(5, "a", 1.0))
    stubber.assert_no_pending_responses()


def test_a_transaction_that_keeps_conflicting_is_dependency_unavailable(
    stubbed_store: tuple[DynamoDBCallStore, Stubber],
) -> None:
    store, stubber = stubbed_store
    for _ in range(5):
        stubber.add_client_error(
            "transact_write_items",
            **_cancelled(
                [
                    {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
                    {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
                ]
            ),
        )
    with pytest.raises(DependencyUnavailableError):
        store.add_packet("c1", Packet(5, "a", 1.0), now="2026-01-01T00:00:00.000000Z", received_at_ns=1)


def test_an_end_whose_write_meets_a_packet_transaction_on_the_call_item_is_retried(
    stubbed_store: tuple[DynamoDBCallStore, Stubber],
) -> None:
    store, stubber = stubbed_store
    moved = {
        "call_id": {"S": "c1"},
        "state": {"S": "PROCESSING_AI"},
        "created_at": {"S": "2026-01-01T00:00:00.000000Z"},
        "updated_at": {"S": "2026-01-01T00:00:01.000000Z"},
        "round": {"N": "1"},
    }
    # GIVEN a packet transaction holds the call item: a single-item write gets
    # TransactionConflictException, which botocore does not retry
    stubber.add_client_error(
        "update_item",
        service_error_code="TransactionConflictException",
        service_message="Transaction is ongoing for the item",
        http_status_code=400,
    )
    stubber.add_response("update_item", {"Attributes": moved})
    # WHEN the end's transition is written
    rule = transition_rule("c1", CallState.IN_PROGRESS, CallState.PROCESSING_AI)
    call = store.transition("c1", rule, now="2026-01-01T00:00:01.000000Z", token="t1")
    # THEN it was tried again and went through
    assert (call.state, call.round) == (CallState.PROCESSING_AI, 1)
    stubber.assert_no_pending_responses()


# ---------------------------------------------------------------- item 4


def test_a_transcript_larger_than_the_call_item_completes_truncated_and_says_so(
    ports: Ports, api: httpx.Client, call_id: str
) -> None:
    # GIVEN an ended call whose AI returns 500 KB of text (DynamoDB items hold 400 KB)
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202
    ai = FakeAIProvider(default_transcript="word " * 100_000)
    # WHEN the worker processes it
    outcome = asyncio.run(process(ports, ai, WorkItem(call_id, 1)))
    # THEN the call is COMPLETED, with the transcript cut to the limit and flagged as cut
    assert outcome is services.ProcessOutcome.COMPLETED
    body = api.get(f"/v1/call/{call_id}").json()
    assert body["state"] == "COMPLETED"
    assert body["ai"]["transcript_truncated"] is True
    assert len(body["ai"]["transcript"].encode()) <= MAX_TRANSCRIPT_BYTES


# ---------------------------------------------------------------- item 5


def test_a_call_whose_recorded_work_item_went_silent_past_every_retry_gets_it_sent_again_once(
    ports: Ports, api: httpx.Client, aws_clients: AwsClients, call_id: str
) -> None:
    # GIVEN an ended call whose work item was sent and recorded, then lost (expired, or
    # its dead letter's handler failed): nothing will ever process its round
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202
    drain_queue(aws_clients, ports.settings.work_queue_url)
    # WHEN the sweeper runs past the longest retry horizon, twice
    _age_round(ports, call_id, seconds=ports.settings.processing_timeout_s + 60)
    sweep = sweeper.build_handler(ports.store, ports.queue, ports.settings)
    sweep({}, None)
    _age_round(ports, call_id, seconds=ports.settings.processing_timeout_s + 60)
    sweep({}, None)
    # THEN the round's item was sent again, once, and the call waits for it
    items = [b for b in drain_queue(aws_clients, ports.settings.work_queue_url) if b["call_id"] == call_id]
    assert items == [{"call_id": call_id, "round": 1}]
    assert api.get(f"/v1/call/{call_id}").json()["state"] == "PROCESSING_AI"


def test_a_call_whose_work_item_is_certainly_gone_is_failed_with_a_reason_by_the_sweeper(
    ports: Ports, api: httpx.Client, aws_clients: AwsClients, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202
    drain_queue(aws_clients, ports.settings.work_queue_url)
    # WHEN the sweeper runs after the work queue's retention period since the last send
    _age_round(ports, call_id, seconds=ports.settings.give_up_after_s() + 60)
    outcome = sweeper.build_handler(ports.store, ports.queue, ports.settings)({}, None)
    # THEN the call is FAILED, saying why and what to do
    assert outcome["failed"] >= 1
    body = api.get(f"/v1/call/{call_id}").json()
    assert body["state"] == "FAILED"
    assert "work item was lost" in body["failure_reason"]
    assert "Retry the call" in body["failure_reason"]


def test_a_call_within_the_retry_horizon_is_left_to_its_retries(
    ports: Ports, api: httpx.Client, aws_clients: AwsClients, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202
    drain_queue(aws_clients, ports.settings.work_queue_url)
    _age_round(ports, call_id, seconds=ports.settings.processing_timeout_s - 60)
    sweeper.build_handler(ports.store, ports.queue, ports.settings)({}, None)
    assert api.get(f"/v1/call/{call_id}").json()["state"] == "PROCESSING_AI"
    assert [b for b in drain_queue(aws_clients, ports.settings.work_queue_url) if b["call_id"] == call_id] == []


# ---------------------------------------------------------------- item 6


def test_get_reads_arrivals_from_the_keys_only_index_never_the_audio(
    ports: Ports, api: httpx.Client, aws_clients: AwsClients, call_id: str
) -> None:
    # GIVEN a call with large packets
    big = "A" * 100_000
    for seq in range(5):
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(seq, data=big)).status_code == 202
    requests: list[dict[str, Any]] = []

    def record(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        requests.append({"operation": model.name, **params})

    aws_clients.dynamodb.meta.events.register("provide-client-params.dynamodb", record)
    try:
        # WHEN the call is read
        body = api.get(f"/v1/call/{call_id}").json()
    finally:
        aws_clients.dynamodb.meta.events.unregister("provide-client-params.dynamodb", record)
    # THEN its statistics are right, and no request read a packet item: the packets
    # were read from the keys-only index, whose items hold no audio (and the slots
    # table, where batched calls keep theirs, was not asked)
    assert body["packets"]["received"] == 5
    queries = [r for r in requests if r["operation"] == "Query"]
    assert queries and all(q.get("IndexName") == ARRIVAL_INDEX for q in queries)
    assert {r["operation"] for r in requests} <= {"GetItem", "Query"}
    assert all(r["TableName"] == ports.settings.calls_table for r in requests if r["operation"] == "GetItem")


def test_the_worker_refuses_a_call_over_its_byte_limit_with_a_reason_naming_it(
    ports: Ports, api: httpx.Client, call_id: str
) -> None:
    for seq in range(3):
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(seq, data="B" * 1000)).status_code == 202
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202
    ai = FakeAIProvider()
    outcome = asyncio.run(process(ports, ai, WorkItem(call_id, 1), max_call_bytes=2500))
    assert outcome is services.ProcessOutcome.FAILED
    assert ai.calls == []
    reason = api.get(f"/v1/call/{call_id}").json()["failure_reason"]
    assert "more than 2500 bytes" in reason


# ---------------------------------------------------------------- item 3


def _seed_where(accept: Callable[[random.Random], bool]) -> int:
    """A LOCAL_FAULTS_SEED whose generator ``accept`` likes: the injector's draws, replayed.

    The fault injector draws one ``random()`` per request that a rule matches
    (devstack/faults.py, FaultInjector.decide), and one ``randrange`` more to pick a
    TransactionConflict's item.
    """
    for seed in range(100_000):
        if accept(random.Random(seed)):
            return seed
    raise AssertionError("no seed found")


def _seed_for(faulted: list[bool], rate: float = 0.5) -> int:
    """With a single rule of ``rate``: a seed that faults exactly the matching requests marked True, in order."""
    return _seed_where(lambda rng: [rng.random() < rate for _ in faulted] == faulted)


@contextmanager
def faulty_stack(monkeypatch: pytest.MonkeyPatch, rule: str, seed: int) -> Iterator[MotoStack]:
    """A moto server of its own, faulting by ``rule`` with ``seed``."""
    monkeypatch.setenv("LOCAL_FAULTS", rule)
    monkeypatch.setenv("LOCAL_FAULTS_SEED", str(seed))
    ms = start_moto_stack()
    monkeypatch.delenv("LOCAL_FAULTS")
    try:
        yield ms
    finally:
        ms.moto.stop()


@contextmanager
def app_on(ms: MotoStack, clients: AwsClients | None = None) -> Iterator[tuple[Ports, httpx.Client]]:
    """The app over ``ms``, served by uvicorn, and a client of it."""
    ports = build_ports(ms.settings(), clients or build_clients(endpoint_url=ms.moto.endpoint))
    from ingest.app import create_app

    with LiveServer(create_app(ports)) as server, httpx.Client(base_url=server.url, timeout=60) as api:
        yield ports, api


def _faults(ms: MotoStack) -> dict[str, Any]:
    with httpx.Client(timeout=10) as client:
        stats: dict[str, Any] = client.get(f"{ms.moto.endpoint}/_local_faults").json()
        return stats


def test_a_packet_transaction_whose_answer_was_lost_is_resent_and_answered_accepted_not_duplicate(
    monkeypatch: pytest.MonkeyPatch, call_id: str
) -> None:
    # GIVEN DynamoDB commits the packet's transaction, then the answer is lost; botocore
    # resends the same request (same ClientRequestToken), whose answer arrives
    with (
        faulty_stack(monkeypatch, "dynamodb.TransactWriteItems=0.5:LostResponse", _seed_for([True, False])) as ms,
        app_on(ms) as (_, api),
    ):
        # WHEN the packet is posted
        response = api.post(f"/v1/call/stream/{call_id}", json=packet(0))
        # THEN it is accepted (not "duplicate" of itself), stored once, counted nowhere twice
        assert _faults(ms)["by_outcome"] == {"LostResponse": 1}
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "accepted"
        body = api.get(f"/v1/call/{call_id}").json()
        assert (body["packets"]["received"], body["packets"]["duplicates"]) == (1, 0)


def test_a_batch_transaction_whose_answer_was_lost_is_resent_and_answered_accepted_not_duplicate(
    monkeypatch: pytest.MonkeyPatch, call_id: str
) -> None:
    # GIVEN the batch's one transaction commits, its answer is lost, and botocore's resend
    # (same ClientRequestToken) is answered
    with (
        faulty_stack(monkeypatch, "dynamodb.TransactWriteItems=0.5:LostResponse", _seed_for([True, False])) as ms,
        app_on(ms) as (_, api),
    ):
        # WHEN the batch is posted
        response = api.post(f"/v1/call/stream/{call_id}/batch", json={"packets": [packet(s) for s in range(10)]})
        # THEN every packet is accepted, stored once, counted nowhere twice
        assert _faults(ms)["by_outcome"] == {"LostResponse": 1}
        assert response.status_code == 200, response.text
        assert {r["status"] for r in response.json()["results"]} == {"accepted"}
        body = api.get(f"/v1/call/{call_id}").json()
        assert (body["packets"]["received"], body["packets"]["duplicates"]) == (10, 0)


def test_a_packet_whose_answer_was_lost_and_whose_resend_met_a_conflict_is_still_accepted(
    monkeypatch: pytest.MonkeyPatch, call_id: str
) -> None:
    # GIVEN the packet's transaction commits and its answer is lost; botocore's resend
    # meets a transaction conflict; the store tries again with a new token, and finds a
    # packet stored under its sequence: its own
    def lost_then_conflict_then_clear(rng: random.Random) -> bool:
        first, second = rng.random(), rng.random()
        if not (first < 0.3 and 0.3 <= second < 0.6):
            return False
        rng.randrange(2)  # the injector picks the conflicting item
        return rng.random() >= 0.6

    rules = "dynamodb.TransactWriteItems=0.3:LostResponse,dynamodb.TransactWriteItems=0.3:TransactionConflict"
    with faulty_stack(monkeypatch, rules, _seed_where(lost_then_conflict_then_clear)) as ms, app_on(ms) as (_, api):
        # WHEN the packet is posted
        response = api.post(f"/v1/call/stream/{call_id}", json=packet(0))
        # THEN it is accepted, not a "duplicate" of itself, and counted nowhere twice
        assert _faults(ms)["by_outcome"] == {"LostResponse": 1, "TransactionConflict": 1}
        assert response.status_code == 202, response.text
        body = api.get(f"/v1/call/{call_id}").json()
        assert (body["packets"]["received"], body["packets"]["duplicates"]) == (1, 0)


def test_a_batch_whose_answer_was_lost_and_whose_resend_met_a_conflict_is_still_accepted(
    monkeypatch: pytest.MonkeyPatch, call_id: str
) -> None:
    # GIVEN as above, for a batch: the store's new try finds the slot holding the batch's
    # sequences, written by its own first try (the write id stored with each packet)
    def lost_then_conflict_then_clear(rng: random.Random) -> bool:
        first, second = rng.random(), rng.random()
        if not (first < 0.3 and 0.3 <= second < 0.6):
            return False
        rng.randrange(2)  # the injector picks the conflicting item (the slot or the call)
        return rng.random() >= 0.6

    rules = "dynamodb.TransactWriteItems=0.3:LostResponse,dynamodb.TransactWriteItems=0.3:TransactionConflict"
    with faulty_stack(monkeypatch, rules, _seed_where(lost_then_conflict_then_clear)) as ms, app_on(ms) as (_, api):
        # WHEN the batch is posted
        response = api.post(f"/v1/call/stream/{call_id}/batch", json={"packets": [packet(s) for s in range(10)]})
        # THEN every packet is accepted, none a "duplicate" of itself
        assert _faults(ms)["by_outcome"] == {"LostResponse": 1, "TransactionConflict": 1}
        assert response.status_code == 200, response.text
        assert {r["status"] for r in response.json()["results"]} == {"accepted"}
        body = api.get(f"/v1/call/{call_id}").json()
        assert (body["packets"]["received"], body["packets"]["duplicates"]) == (10, 0)


def test_a_duplicate_whose_count_answer_was_lost_is_counted_once(monkeypatch: pytest.MonkeyPatch, call_id: str) -> None:
    # The only UpdateItem of this test is the duplicate's count: its answer is lost, the resend arrives.
    with (
        faulty_stack(monkeypatch, "dynamodb.UpdateItem=0.5:LostResponse", _seed_for([True, False])) as ms,
        app_on(ms) as (_, api),
    ):
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 200
        assert _faults(ms)["by_outcome"] == {"LostResponse": 1}
        assert api.get(f"/v1/call/{call_id}").json()["packets"]["duplicates"] == 1


def test_an_attempt_whose_count_answer_was_lost_is_counted_once(monkeypatch: pytest.MonkeyPatch, call_id: str) -> None:
    # UpdateItems of this test, in order: the end's transition, mark_enqueued, the
    # attempt's count (answer lost, then resent), the round's completion.
    with (
        faulty_stack(
            monkeypatch, "dynamodb.UpdateItem=0.5:LostResponse", _seed_for([False, False, True, False, False])
        ) as ms,
        app_on(ms) as (ports, api),
    ):
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
        assert api.post(f"/v1/call/{call_id}/end").status_code == 202
        # WHEN the worker counts its attempt, and that write's answer is lost and resent
        outcome = asyncio.run(process(ports, FakeAIProvider(), WorkItem(call_id, 1), max_call_bytes=10**6))
        # THEN the attempt is counted once, and the round completes
        assert _faults(ms)["by_outcome"] == {"LostResponse": 1}
        assert outcome is services.ProcessOutcome.COMPLETED
        body = api.get(f"/v1/call/{call_id}").json()
        assert body["ai"]["attempts"] == 1
        assert [h["number"] for h in body["ai"]["history"]] == [1]


def test_an_end_whose_transition_answer_was_lost_still_sends_its_work_item_at_once(
    monkeypatch: pytest.MonkeyPatch, call_id: str
) -> None:
    # GIVEN the end's transition commits and its answer is lost; the resend is refused
    # (the call is no longer IN_PROGRESS), which is the end's own success
    with faulty_stack(monkeypatch, "dynamodb.UpdateItem=0.5:LostResponse", _seed_for([True, False, False])) as ms:
        clients = build_clients(endpoint_url=ms.moto.endpoint)
        with app_on(ms, clients) as (ports, api):
            assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
            # WHEN the call is ended
            assert api.post(f"/v1/call/{call_id}/end").status_code == 202
        # THEN its work item is on the queue now, not after the sweeper's delay
        assert _faults(ms)["by_outcome"] == {"LostResponse": 1}
        assert drain_queue(clients, ms.settings().work_queue_url) == [{"call_id": call_id, "round": 1}]
        call = ports.store.get_call(call_id)
        assert call is not None and call.enqueued_round == 1


def test_a_sequence_beyond_the_calls_packet_limit_is_refused_and_stores_nothing(
    ports: Ports, api: httpx.Client, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(MAX_SEQUENCE)).status_code == 202
    response = api.post(f"/v1/call/stream/{call_id}", json=packet(MAX_SEQUENCE + 1))
    assert response.status_code == 422
    assert f"less than or equal to {MAX_SEQUENCE}" in response.json()["message"]
    assert [a.sequence for a in ports.store.arrivals(call_id)] == [MAX_SEQUENCE]


# ---------------------------------------------------------------- item 8


@pytest.mark.parametrize(
    ("broken", "route"),
    [
        ("calls_table", "stream"),
        ("packets_table", "stream"),
        ("work_queue_url", "end"),
    ],
)
def test_a_wrong_table_or_queue_name_is_a_configuration_error_not_retry_later(
    ports: Ports,
    aws_clients: AwsClients,
    api: httpx.Client,
    call_id: str,
    caplog: pytest.LogCaptureFixture,
    *,
    broken: str,
    route: str,
) -> None:
    # GIVEN an app configured with a table or queue that does not exist
    wrong = getattr(ports.settings, broken).replace("Table", "Tabel").replace("WorkQueue", "WorkQueu")
    misconfigured = build_ports(replace(ports.settings, **{broken: wrong}), aws_clients)
    from ingest.app import create_app

    if route == "end":
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    with LiveServer(create_app(misconfigured)) as server, httpx.Client(base_url=server.url, timeout=60) as bad_api:
        # WHEN a request needs it
        if route == "stream":
            response = bad_api.post(f"/v1/call/stream/{call_id}", json=packet(0))
        else:
            response = bad_api.post(f"/v1/call/{call_id}/end")
    # THEN the answer says so, with no Retry-After and no AWS code: retrying cannot help.
    # (For the end, the call has ended; once the queue name is fixed, the sweeper sends
    # the round's item, which was never recorded as sent.)
    assert response.status_code == 500
    assert response.json()["error"] == "configuration_error"
    assert "Retry-After" not in response.headers
    assert "ResourceNotFound" not in response.text and "NonExistentQueue" not in response.text
    # ... and the operators' log names what is wrong
    assert "misconfigured" in caplog.text


# ---------------------------------------------------------------- the ingest function's timeout


def test_a_request_whose_first_write_was_slow_answers_503_rather_than_outliving_the_lambda_timeout(
    ports: Ports, aws_clients: AwsClients, api: httpx.Client, call_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a duplicate packet (a transaction, then a second write to count it), and a
    # transaction that takes 3 s: the count could then run past the 10 s Lambda timeout
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 202
    now = [1000.0]
    monkeypatch.setattr(aws_errors, "_clock", lambda: now[0])

    def slow(**kwargs: Any) -> None:
        now[0] += 3.0

    aws_clients.dynamodb.meta.events.register("after-call.dynamodb.TransactWriteItems", slow)
    try:
        # WHEN the duplicate arrives
        response = api.post(f"/v1/call/stream/{call_id}", json=packet(1))
    finally:
        aws_clients.dynamodb.meta.events.unregister("after-call.dynamodb.TransactWriteItems", slow)
    # THEN the second write is not started: the answer is a 503 to retry, not a timeout (502)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert api.get(f"/v1/call/{call_id}").json()["packets"]["duplicates"] == 0

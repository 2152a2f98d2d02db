"""The ingest hot path's budget: no read before write, at most two DynamoDB write requests
per packet, AWS clients created once per process. Requests are counted, not timed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from callcore.bootstrap import AwsClients, Ports
from tests.integration.helpers import packet


@pytest.fixture
def dynamodb_calls(aws_clients: AwsClients) -> Iterator[list[str]]:
    """The DynamoDB operations the app's client sends, in order."""
    calls: list[str] = []

    def record(model: Any, **kwargs: Any) -> None:
        calls.append(model.name)

    aws_clients.dynamodb.meta.events.register("before-call.dynamodb", record)
    try:
        yield calls
    finally:
        aws_clients.dynamodb.meta.events.unregister("before-call.dynamodb", record)


def test_a_new_packet_costs_one_write_request_and_no_read(
    api: httpx.Client, call_id: str, dynamodb_calls: list[str]
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    dynamodb_calls.clear()
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 202
    assert dynamodb_calls == ["TransactWriteItems"]


def test_a_call_opened_by_sequence_0_costs_one_write_request_and_no_read(
    api: httpx.Client, call_id: str, dynamodb_calls: list[str]
) -> None:
    # Sequence 0 goes straight to the transaction that creates the call with the packet.
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    assert dynamodb_calls == ["TransactWriteItems"]
    assert api.get(f"/v1/call/{call_id}").json()["state"] == "IN_PROGRESS"


def test_a_call_opened_by_a_later_sequence_costs_two_write_requests_and_no_read(
    api: httpx.Client, call_id: str, dynamodb_calls: list[str]
) -> None:
    # The packet-with-check transaction finds no call, then the one that creates it runs.
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(3)).status_code == 202
    assert dynamodb_calls == ["TransactWriteItems", "TransactWriteItems"]


def test_sequence_0_of_an_existing_call_costs_one_write_request_and_changes_nothing_on_the_call(
    api: httpx.Client, ports: Ports, call_id: str, dynamodb_calls: list[str]
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 202
    before = ports.store.get_call(call_id)
    dynamodb_calls.clear()
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    assert dynamodb_calls == ["TransactWriteItems"]
    assert ports.store.get_call(call_id) == before  # every attribute of the call item, updated_at included
    assert api.get(f"/v1/call/{call_id}").json()["packets"]["received"] == 2


def test_sequence_0_sent_again_after_the_end_is_a_duplicate_and_counted(
    api: httpx.Client, ports: Ports, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202
    again = api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    other = api.post(f"/v1/call/stream/{call_id}", json=packet(0, data="other"))
    assert other.status_code == 409
    call = api.get(f"/v1/call/{call_id}").json()
    assert (call["state"], call["packets"]["received"], call["packets"]["duplicates"]) == ("PROCESSING_AI", 1, 1)


def test_a_duplicate_costs_two_write_requests_and_no_read(
    api: httpx.Client, call_id: str, dynamodb_calls: list[str]
) -> None:
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    dynamodb_calls.clear()
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 200
    assert dynamodb_calls == ["TransactWriteItems", "UpdateItem"]


def test_a_conflicting_or_late_packet_costs_one_write_request(
    api: httpx.Client, call_id: str, dynamodb_calls: list[str]
) -> None:
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    api.post(f"/v1/call/{call_id}/end")
    dynamodb_calls.clear()
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0, data="other")).status_code == 409
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 409
    assert dynamodb_calls == ["TransactWriteItems", "TransactWriteItems"]


@pytest.mark.usefixtures("lambda_loop")
def test_aws_clients_are_created_once_per_process_not_per_request(
    moto_stack: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest.app import handler
    from tests.integration.test_lambda_handler import LAMBDA_CONTEXT, api_event

    created: list[str] = []
    original = boto3.session.Session.client

    def counting_client(self: boto3.session.Session, service: str, *args: Any, **kwargs: Any) -> Any:
        created.append(service)
        return original(self, service, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", counting_client)
    first = api_event("POST", "/v1/call/stream/{call_id}", {"call_id": "clients-once"}, body=packet(0))
    assert handler(first, LAMBDA_CONTEXT)["statusCode"] in (200, 202)
    assert created.count("dynamodb") <= 1  # made by the sandbox's first request, if no request came before
    created.clear()
    for seq in range(1, 11):
        event = api_event("POST", "/v1/call/stream/{call_id}", {"call_id": "clients-once"}, body=packet(seq))
        assert handler(event, LAMBDA_CONTEXT)["statusCode"] in (200, 202)
    assert created == []

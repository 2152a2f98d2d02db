"""ARCHIVED over HTTP against moto: the archive route, GET and the listing of an archived
call, its record in S3, the packets' TTL attribute, and the local stack's TTL removal."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from callcore.adapters.dynamodb_store import EXPIRES_AT
from callcore.bootstrap import AwsClients, Ports
from callcore.clock import now_iso
from callcore.domain.model import AIResult, CallState, Sentiment, transition_rule
from callcore.services import new_token
from devstack.template import load_template
from devstack.ttl import TtlSweeper, remove_expired, ttl_tables
from tests.conftest import MotoStack
from tests.integration.helpers import packet, post_concurrently_retrying, read_store


def completed_call(api: httpx.Client, ports: Ports, call_id: str) -> None:
    """Packets by both routes (0 and 2 in a batch, 1 twice, 3 missing), ended at 4, then a recording
    and COMPLETED, as the worker leaves a call."""
    assert api.post(f"/v1/call/stream/{call_id}/batch", json={"packets": [packet(0), packet(2)]}).status_code == 200
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 202
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 200
    assert api.post(f"/v1/call/{call_id}/end", json={"last_sequence": 4}).status_code == 202
    recording = ports.recordings.save(call_id, b"RIFF-not-really-a-wav", duration_s=0.06)
    ports.store.set_recording(call_id, recording)
    rule = transition_rule(call_id, CallState.PROCESSING_AI, CallState.COMPLETED)
    result = AIResult("thank you", Sentiment("POSITIVE", 0.8))
    ports.store.transition(call_id, rule, now="2026-12-01T00:00:00.000000Z", token=new_token(), result=result)


def packet_items(aws_clients: AwsClients, ports: Ports, call_id: str) -> list[dict[str, Any]]:
    """The call's raw items in both packet tables."""
    items: list[dict[str, Any]] = []
    for table in (ports.settings.packets_table, ports.settings.slots_table):
        items += aws_clients.dynamodb.query(
            TableName=table,
            KeyConditionExpression="call_id = :id",
            ExpressionAttributeValues={":id": {"S": call_id}},
            ConsistentRead=True,
        )["Items"]
    return items


def test_an_archived_call_answers_get_its_listing_and_its_recording_and_cannot_be_retried(
    api: httpx.Client, ports: Ports, call_id: str
) -> None:
    completed_call(api, ports, call_id)
    before = api.get(f"/v1/call/{call_id}").json()

    archived = api.post(f"/v1/call/{call_id}/archive")
    again = api.post(f"/v1/call/{call_id}/archive")

    assert archived.status_code == 200, archived.text
    assert archived.json() == {"call_id": call_id, "state": "ARCHIVED"}
    assert again.status_code == 200
    after = api.get(f"/v1/call/{call_id}").json()
    assert after["state"] == "ARCHIVED"
    assert after["packets"] == before["packets"]
    assert (after["packets"]["received"], after["packets"]["duplicates"], after["packets"]["missing"]) == (3, 1, [3, 4])
    assert after["ai"]["transcript"] == "thank you"
    record = ports.archive.find(call_id)
    assert record is not None
    assert record["timeline"]["finished_as"] == "COMPLETED"
    assert record["packets"]["received"] == 3
    listed = api.get("/v1/calls", params={"state": "ARCHIVED", "limit": 100}).json()["calls"]
    assert call_id in [c["call_id"] for c in listed]
    retry = api.post(f"/v1/call/{call_id}/retry")
    assert retry.status_code == 409, retry.text
    wav = api.get(f"/v1/call/{call_id}/recording")
    assert (wav.status_code, wav.content) == (200, b"RIFF-not-really-a-wav")


def test_only_finished_calls_are_archived(api: httpx.Client, call_id: str) -> None:
    assert api.post(f"/v1/call/{call_id}/archive").status_code == 404
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202

    in_progress = api.post(f"/v1/call/{call_id}/archive")
    api.post(f"/v1/call/{call_id}/end")
    processing = api.post(f"/v1/call/{call_id}/archive")

    assert (in_progress.status_code, processing.status_code) == (409, 409)
    assert "cannot move to ARCHIVED" in processing.json()["message"]
    assert api.get(f"/v1/call/{call_id}").json()["state"] == "PROCESSING_AI"


def test_packets_carry_their_expiry_and_leave_with_it_while_the_archived_call_still_answers(
    moto_stack: MotoStack, api: httpx.Client, ports: Ports, aws_clients: AwsClients, call_id: str
) -> None:
    started = time.time()
    completed_call(api, ports, call_id)
    assert api.post(f"/v1/call/{call_id}/archive").status_code == 200
    items = packet_items(aws_clients, ports, call_id)
    ttl = ports.settings.packet_ttl_s()
    assert items and all(started + ttl - 5 <= int(i[EXPIRES_AT]["N"]) <= time.time() + ttl for i in items)

    # Their expiry comes (moved to the past here), and the local stack's TTL removes them.
    for item in items:
        table = ports.settings.slots_table if "slot" in item else ports.settings.packets_table
        key = {k: item[k] for k in ("call_id", "slot" if "slot" in item else "sequence")}
        aws_clients.dynamodb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET #ttl = :past",
            ExpressionAttributeNames={"#ttl": EXPIRES_AT},
            ExpressionAttributeValues={":past": {"N": str(int(started) - 1)}},
        )
    assert ttl_tables(load_template()) == {"PacketsTable": EXPIRES_AT, "PacketSlotsTable": EXPIRES_AT}
    assert remove_expired(moto_stack.moto.endpoint, now_s=time.time()) >= len(items)

    assert packet_items(aws_clients, ports, call_id) == []
    body = api.get(f"/v1/call/{call_id}").json()
    assert body["state"] == "ARCHIVED"
    assert (body["packets"]["received"], body["packets"]["missing"]) == (3, [3, 4])


def test_the_local_ttl_sweeper_removes_expired_items_on_its_own(
    moto_stack: MotoStack, api: httpx.Client, ports: Ports, aws_clients: AwsClients, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    aws_clients.dynamodb.update_item(
        TableName=ports.settings.packets_table,
        Key={"call_id": {"S": call_id}, "sequence": {"N": "0"}},
        UpdateExpression="SET #ttl = :past",
        ExpressionAttributeNames={"#ttl": EXPIRES_AT},
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )
    sweeper = TtlSweeper(moto_stack.moto.endpoint, interval_s=0.05)
    sweeper.start()
    try:
        deadline = time.monotonic() + 10
        while packet_items(aws_clients, ports, call_id):
            assert time.monotonic() < deadline, "the expired packet was not removed"
            time.sleep(0.05)  # polling a condition with a deadline, not a sleep standing in for one
    finally:
        sweeper.stop()


def test_the_local_ttl_removes_only_items_whose_expiry_is_a_number_at_or_before_now(
    moto_stack: MotoStack, aws_clients: AwsClients, ports: Ports, call_id: str
) -> None:
    # As DynamoDB: the attribute must be a number of epoch seconds; any other value, or a
    # time still to come, never expires. Tables without TTL are never swept.
    now = time.time()
    expiries = {1: {"N": str(int(now) - 1)}, 2: {"N": str(int(now))}, 3: {"N": str(int(now) + 3600)}}
    expiries |= {4: {"S": str(int(now) - 1)}}
    for sequence, expiry in expiries.items():
        aws_clients.dynamodb.put_item(
            TableName=ports.settings.packets_table,
            Item={"call_id": {"S": call_id}, "sequence": {"N": str(sequence)}, EXPIRES_AT: expiry},
        )
    aws_clients.dynamodb.put_item(
        TableName=ports.settings.calls_table,
        Item={"call_id": {"S": call_id}, EXPIRES_AT: {"N": str(int(now) - 1)}},
    )

    assert remove_expired(moto_stack.moto.endpoint, now_s=now) >= 2

    left = [int(i["sequence"]["N"]) for i in packet_items(aws_clients, ports, call_id)]
    assert left == [3, 4]
    calls = aws_clients.dynamodb.get_item(TableName=ports.settings.calls_table, Key={"call_id": {"S": call_id}})
    assert "Item" in calls
    # A malformed clock is a clear 400, and deletes nothing.
    answer = httpx.post(f"{moto_stack.moto.endpoint}/_local_ttl", params={"now": "soon"})
    assert answer.status_code == 400 and "epoch seconds" in answer.json()["error"]


@pytest.mark.chaos
def test_archives_and_retries_racing_on_a_failed_call_end_in_exactly_one_of_them(
    live_api: str, ports: Ports, call_id: str
) -> None:
    path = f"/v1/call/stream/{call_id}"
    assert post_concurrently_retrying(live_api, [(path, packet(0))]).final[0].status_code == 202
    assert post_concurrently_retrying(live_api, [(f"/v1/call/{call_id}/end", None)]).final[0].status_code == 202
    rule = transition_rule(call_id, CallState.PROCESSING_AI, CallState.FAILED)
    read_store(lambda: ports.store.transition(call_id, rule, now=now_iso(), token=new_token(), failure_reason="x"))
    archive, retry = (f"/v1/call/{call_id}/archive", None), (f"/v1/call/{call_id}/retry", None)

    answers = post_concurrently_retrying(live_api, [archive, retry, archive, retry])

    assert answers.unexpected == []
    archived = [r.status_code for r in answers.final[0::2]]
    retried = [r.status_code for r in answers.final[1::2]]
    state = read_store(lambda: ports.store.get_call(call_id)).state  # type: ignore[union-attr]
    if state is CallState.ARCHIVED:
        assert 200 in archived and set(archived) <= {200, 409} and set(retried) == {409}
        assert read_store(lambda: ports.archive.find(call_id)) is not None
    else:
        # One retry won: the call is processing again, and neither archive nor the other retry went through.
        assert state is CallState.PROCESSING_AI
        assert sorted(retried) == [202, 409] and set(archived) == {409}

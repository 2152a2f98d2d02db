"""The local stack's usage meter: what each request to moto would bill on AWS, counted by
the moto server itself (devstack/usage.py) and read back over HTTP."""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from callcore import services
from callcore.bootstrap import AwsClients, build_ports
from callcore.domain.model import CallState, Packet, transition_rule
from devstack.usage import item_size, read_units, value_size, write_units
from tests.conftest import MotoStack


def usage(ms: MotoStack, *, reset: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(
        f"{ms.moto.endpoint}/_local_usage", params={"reset": "1"} if reset else {}
    ).json()
    return answer


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({"S": "héllo"}, 6),  # UTF-8 bytes
        ({"N": "12345"}, 4),  # 5 significant digits: ceil(5 / 2) + 1
        ({"N": "1.500"}, 2),  # trailing zeros are not significant
        ({"B": "AAEC"}, 3),  # bytes, as the wire's base64 decodes
        ({"BOOL": True}, 1),
        ({"L": [{"S": "ab"}, {"N": "1"}]}, 3 + (2 + 1) + (2 + 1)),
        ({"M": {"k": {"S": "v"}}}, 3 + (1 + 1 + 1)),
    ],
)
def test_value_sizes_follow_dynamodbs_rules(value: dict[str, Any], size: int) -> None:
    assert value_size(value) == size


def test_units_round_up_per_kilobyte_written_and_per_4_kilobytes_read() -> None:
    assert [write_units(n) for n in (0, 1, 1024, 1025)] == [1, 1, 1, 2]
    assert read_units(4096, consistent=True) == 1.0
    assert read_units(4097, consistent=True) == 2.0
    assert read_units(4097, consistent=False) == 1.0


def test_writes_reads_and_transactions_are_billed_as_dynamodb_bills_them(
    moto_stack: MotoStack, aws_clients: AwsClients, call_id: str
) -> None:
    ddb = aws_clients.dynamodb
    table = moto_stack.env["PACKETS_TABLE"]
    big = {"call_id": {"S": call_id}, "sequence": {"N": "1"}, "data": {"S": "x" * 1500}}
    usage(moto_stack, reset=True)

    ddb.put_item(TableName=table, Item=big)  # 1,500+ bytes: 2 units
    ddb.get_item(TableName=table, Key={"call_id": {"S": call_id}, "sequence": {"N": "1"}}, ConsistentRead=True)
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": table, "Item": {**big, "sequence": {"N": "2"}}}},  # 2 units, doubled
            {"ConditionCheck": {  # the existing 1,500-byte item: 2 units, doubled
                "TableName": table,
                "Key": {"call_id": {"S": call_id}, "sequence": {"N": "1"}},
                "ConditionExpression": "attribute_exists(call_id)",
            }},
        ]
    )  # fmt: skip
    counted = usage(moto_stack)

    size = item_size(big)
    assert math.ceil(size / 1024) == 2
    assert counted["requests"] == {"dynamodb.GetItem": 1, "dynamodb.PutItem": 1, "dynamodb.TransactWriteItems": 1}
    assert counted["dynamodb"] == {"write_units": 2 + 2 * 2 + 2 * 2, "read_units": 1.0}


def test_an_update_bills_the_whole_item_it_grows(moto_stack: MotoStack, aws_clients: AwsClients, call_id: str) -> None:
    table = moto_stack.env["PACKETS_TABLE"]
    key = {"call_id": {"S": call_id}, "sequence": {"N": "7"}}
    aws_clients.dynamodb.put_item(TableName=table, Item={**key, "data": {"S": "y" * 2900}})
    usage(moto_stack, reset=True)

    aws_clients.dynamodb.update_item(
        TableName=table, Key=key, UpdateExpression="SET n = :n", ExpressionAttributeValues={":n": {"N": "1"}}
    )

    assert 2048 < item_size({**key, "data": {"S": "y" * 2900}, "n": {"N": "1"}}) <= 3072
    assert usage(moto_stack)["dynamodb"]["write_units"] == 3  # the whole 3 KB item, for a 3-byte change


def mulaw_packets(count: int) -> list[Packet]:
    """``count`` 20 ms mu-law packets (160 bytes each), sequences 0 on."""
    return [
        Packet(sequence=s, data=base64.b64encode(bytes([s % 256]) * 160).decode(), timestamp=s * 0.02)
        for s in range(count)
    ]


def test_an_aligned_batch_of_ten_mulaw_packets_bills_six_write_units(
    moto_stack: MotoStack, aws_clients: AwsClients, call_id: str
) -> None:
    # The batch layout's promise (docs/batched-ingest.md): one slot item under 2 KB and the
    # call's check, both transactional: 2 x 2 + 2 x 1. The second batch finds the call.
    store = build_ports(moto_stack.settings(), aws_clients).store
    mulaw = mulaw_packets(20)
    usage(moto_stack, reset=True)

    store.add_packets(call_id, mulaw[:10], now="2026-12-01T00:00:00.000000Z", received_at_ns=time.time_ns())
    first = usage(moto_stack, reset=True)
    store.add_packets(call_id, mulaw[10:], now="2026-12-01T00:00:00.000000Z", received_at_ns=time.time_ns())
    second = usage(moto_stack)

    for counted in (first, second):
        assert counted["requests"] == {"dynamodb.TransactWriteItems": 1}
        assert counted["dynamodb"]["write_units"] == 6


def test_the_bytes_the_tables_hold_are_counted_as_dynamodb_bills_storage(
    moto_stack: MotoStack, aws_clients: AwsClients, call_id: str
) -> None:
    # Each item's size plus 100 bytes, and each index's copy (its projection) plus 100 more;
    # packets (they carry the TTL attribute) apart from the call's own item (it stays).
    store = build_ports(moto_stack.settings(), aws_clients).store
    mulaw = mulaw_packets(10)
    usage(moto_stack, reset=True)

    store.add_packets(call_id, mulaw, now="2026-12-01T00:00:00.000000Z", received_at_ns=time.time_ns())
    stored = usage(moto_stack)["dynamodb_stored_bytes"]

    def read(table: str, key: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = aws_clients.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        return item

    slots_table, calls_table = moto_stack.env["PACKET_SLOTS_TABLE"], moto_stack.env["CALLS_TABLE"]
    slot = read(slots_table, {"call_id": {"S": call_id}, "slot": {"N": "0"}})
    call = read(calls_table, {"call_id": {"S": call_id}})
    # The calls table's by-state index holds its keys and four listed attributes.
    listed = ("call_id", "state", "updated_at", "created_at", "failure_reason", "round", "enqueued_round")
    in_index = {name: value for name, value in call.items() if name in listed}
    assert "expires_at" in slot and "expires_at" not in call
    assert stored[slots_table] == {"expiring": item_size(slot) + 100, "kept": 0}
    assert stored[calls_table] == {"expiring": 0, "kept": item_size(call) + 100 + item_size(in_index) + 100}
    assert 1600 < item_size(slot) < 2048  # ten 160-byte packets, one item (2 write units)
    # Nothing new stored, nothing counted: the figures are what the tables gained since the reset.
    usage(moto_stack, reset=True)
    assert all(held == {"expiring": 0, "kept": 0} for held in usage(moto_stack)["dynamodb_stored_bytes"].values())


def test_get_of_a_call_whose_packet_statistics_are_noted_reads_one_item_however_long_the_call(
    moto_stack: MotoStack, aws_clients: AwsClients, call_id: str
) -> None:
    # DESIGN: GET's cost does not grow with the call's audio. Before the worker notes the
    # statistics, GET of a batched call reads its slots (its audio); after, the call alone.
    ports = build_ports(moto_stack.settings(), aws_clients)
    store = ports.store
    reads: dict[int, list[dict[str, Any]]] = {}
    for packets in (10, 500):
        call = f"{call_id}-{packets}"
        sent = mulaw_packets(packets)
        for start in range(0, packets, 10):
            batch = sent[start : start + 10]
            store.add_packets(call, batch, now="2026-12-01T00:00:00.000000Z", received_at_ns=time.time_ns())
        store.transition(
            call, transition_rule(call, CallState.IN_PROGRESS, CallState.PROCESSING_AI), now="t", token="end"
        )
        usage(moto_stack, reset=True)
        before = services.get_call(store, ports.archive, call).packets
        reads[packets] = [usage(moto_stack, reset=True)]
        store.note_packet_stats(call, before)
        usage(moto_stack, reset=True)
        assert services.get_call(store, ports.archive, call).packets == before
        reads[packets].append(usage(moto_stack))
        assert before.received == packets

    for counted in (reads[10][1], reads[500][1]):
        assert counted["requests"] == {"dynamodb.GetItem": 1}
        assert counted["dynamodb"]["read_units"] == 1.0
    # What it replaces: the call, its (empty) arrival index and its slots, 2 KB each: one for
    # 10 packets, 50 for 10 s of audio.
    assert reads[10][0]["dynamodb"]["read_units"] == 3.0
    assert reads[500][0]["dynamodb"]["read_units"] >= 25.0


def test_s3_and_sqs_requests_are_counted_by_billing_class(
    moto_stack: MotoStack, aws_clients: AwsClients, call_id: str
) -> None:
    bucket = moto_stack.env["RECORDINGS_BUCKET"]
    queue = aws_clients.sqs.create_queue(QueueName=f"usage-{abs(hash(call_id))}")["QueueUrl"]
    usage(moto_stack, reset=True)

    aws_clients.s3.put_object(Bucket=bucket, Key=f"calls/{call_id}/x.wav", Body=b"\0" * 5000)
    aws_clients.s3.head_object(Bucket=bucket, Key=f"calls/{call_id}/x.wav")
    aws_clients.s3.get_object(Bucket=bucket, Key=f"calls/{call_id}/x.wav")["Body"].read()
    aws_clients.sqs.send_message(QueueUrl=queue, MessageBody="z" * 70_000)  # two 64 KB chunks
    counted = usage(moto_stack)
    aws_clients.sqs.delete_queue(QueueUrl=queue)

    assert counted["s3"] == {"put_class": 1, "get_class": 2, "bytes_put": 5000}
    assert counted["sqs_billed_requests"] == 2


def test_a_request_to_a_table_that_does_not_exist_gets_moto_s_own_answer(
    moto_stack: MotoStack, aws_clients: AwsClients, call_id: str
) -> None:
    item = {"call_id": {"S": call_id}, "sequence": {"N": "0"}}

    with pytest.raises(ClientError) as excinfo:
        aws_clients.dynamodb.transact_write_items(TransactItems=[{"Put": {"TableName": "NoSuchTable", "Item": item}}])

    assert excinfo.value.response["Error"]["Code"] == "ResourceNotFoundException"

"""The moto patches answer every request as moto's own code does.

Each test runs one scenario of boto3 calls twice against in-process moto (``mock_aws``):
once as moto is, once with ``devstack.moto_server``'s patches, and compares every
answer (errors included) and the tables' contents. Each also checks what the answers
are, so that two runs failing alike cannot pass for equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.parsing.ast_nodes import Node  # type: ignore[attr-defined]
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]

from devstack import moto_server

# An explicit AWS endpoint: the tests' environment points the SDKs at a local moto server.
ENDPOINT = "https://dynamodb.us-east-1.amazonaws.com"

Scenario = Callable[[Any], list[Any]]


def _client() -> Any:
    return boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def call(operation: Callable[..., Any], **request: Any) -> dict[str, Any]:
    """The answer, or the error with its status and extras, without what differs per request."""
    try:
        answer = dict(operation(**request))
    except ClientError as e:
        answer = dict(e.response)
        answer["Status"] = answer["ResponseMetadata"]["HTTPStatusCode"]
    answer.pop("ResponseMetadata", None)
    return answer


def contents(client: Any, *tables: str) -> dict[str, list[Any]]:
    return {table: client.scan(TableName=table, ConsistentRead=True)["Items"] for table in tables}


def same_as_moto(scenario: Scenario) -> list[Any]:
    """The scenario's answers with the patches, asserted equal to unpatched moto's."""
    with mock_aws():
        theirs = scenario(_client())
    with moto_server.patches_applied(), mock_aws():
        ours = scenario(_client())
    assert ours == theirs
    return ours


def create_tables(client: Any) -> None:
    """``packets`` (call_id, sequence: N) with an LSI and a GSI; ``calls`` (call_id) alone."""
    client.create_table(
        TableName="packets",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "call_id", "AttributeType": "S"},
            {"AttributeName": "sequence", "AttributeType": "N"},
            {"AttributeName": "size", "AttributeType": "N"},
            {"AttributeName": "state", "AttributeType": "S"},
            {"AttributeName": "updated_at", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "call_id", "KeyType": "HASH"},
            {"AttributeName": "sequence", "KeyType": "RANGE"},
        ],
        LocalSecondaryIndexes=[
            {
                "IndexName": "by-size",
                "KeySchema": [
                    {"AttributeName": "call_id", "KeyType": "HASH"},
                    {"AttributeName": "size", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-state",
                "KeySchema": [
                    {"AttributeName": "state", "KeyType": "HASH"},
                    {"AttributeName": "updated_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["size"]},
            }
        ],
    )
    client.create_table(
        TableName="calls",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "call_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "call_id", "KeyType": "HASH"}],
    )


def packet(call_id: str, sequence: int, **attrs: Any) -> dict[str, Any]:
    return {"call_id": {"S": call_id}, "sequence": {"N": str(sequence)}, **attrs}


def packet_key(call_id: str, sequence: int) -> dict[str, Any]:
    return packet(call_id, sequence)


def call_key(call_id: str) -> dict[str, Any]:
    return {"call_id": {"S": call_id}}


# ------------------------------------------------------------------ TransactWriteItems


def transactions(client: Any) -> list[Any]:
    create_tables(client)
    for sequence in range(4):
        client.put_item(TableName="packets", Item=packet("c1", sequence, audio={"S": f"a{sequence}"}))
    client.put_item(TableName="packets", Item=packet("c2", 0, audio={"S": "b0"}))
    client.put_item(
        TableName="calls",
        Item={
            "call_id": {"S": "c1"},
            "state": {"S": "IN_PROGRESS"},
            "label": {"S": "x"},
            "attempts": {"L": [{"N": "1"}]},
        },
    )
    client.put_item(TableName="calls", Item={"call_id": {"S": "c2"}, "state": {"S": "ENDED"}})
    answers: list[Any] = []

    def transact(*items: dict[str, Any]) -> None:
        answers.append(call(client.transact_write_items, TransactItems=list(items)))
        answers.append(contents(client, "packets", "calls"))

    new_packet = {"TableName": "packets", "Item": packet("c1", 9, audio={"S": "a9"})}
    not_there = {"ConditionExpression": "attribute_not_exists(call_id)"}
    # Committed: Put, Update, Delete and ConditionCheck, each with a condition that holds.
    transact(
        {"Put": {**new_packet, **not_there}},
        {
            "Update": {
                "TableName": "calls",
                "Key": call_key("c1"),
                "UpdateExpression": "SET #s = :s ADD packets :one",
                "ConditionExpression": "#s = :was",
                "ExpressionAttributeNames": {"#s": "state"},
                "ExpressionAttributeValues": {":s": {"S": "ENDED"}, ":one": {"N": "1"}, ":was": {"S": "IN_PROGRESS"}},
            }
        },
        {
            "Delete": {
                "TableName": "packets",
                "Key": packet_key("c1", 0),
                "ConditionExpression": "attribute_exists(audio)",
            }
        },
        {
            "ConditionCheck": {
                "TableName": "calls",
                "Key": call_key("c2"),
                "ConditionExpression": "#s = :ended",
                "ExpressionAttributeNames": {"#s": "state"},
                "ExpressionAttributeValues": {":ended": {"S": "ENDED"}},
            }
        },
    )
    # Cancelled: conditions failing with and without ALL_OLD (on an item there and not),
    # after and before writes that would have gone through.
    transact(
        {"Put": {"TableName": "packets", "Item": packet("c3", 0), **not_there}},
        {
            "Put": {
                "TableName": "packets",
                "Item": packet("c1", 1, audio={"S": "dup"}),
                **not_there,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "Update": {
                "TableName": "calls",
                "Key": call_key("c2"),
                "UpdateExpression": "SET label = :l",
                "ExpressionAttributeValues": {":l": {"S": "cancelled?"}},
            }
        },
        {
            "ConditionCheck": {
                "TableName": "calls",
                "Key": call_key("c1"),
                "ConditionExpression": "attribute_not_exists(call_id)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "Delete": {
                "TableName": "packets",
                "Key": packet_key("c9", 0),
                "ConditionExpression": "attribute_exists(call_id)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "Delete": {
                "TableName": "packets",
                "Key": packet_key("c1", 2),
                "ConditionExpression": "attribute_not_exists(call_id)",
            }
        },
    )
    # Rolled back: an Update fails as it is applied (ADD to a string) after a Put, a Delete
    # and an Update were written.
    transact(
        {"Put": {"TableName": "packets", "Item": packet("c4", 0)}},
        {"Delete": {"TableName": "packets", "Key": packet_key("c1", 3)}},
        {
            "Update": {
                "TableName": "calls",
                "Key": call_key("c2"),
                "UpdateExpression": "SET label = :l",
                "ExpressionAttributeValues": {":l": {"S": "rolled back?"}},
            }
        },
        {
            "Update": {
                "TableName": "calls",
                "Key": call_key("c1"),
                "UpdateExpression": "ADD label :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        },
    )
    # Rolled back too: moto fails this Update half-way (its SET applied, then a TypeError
    # removing from a number), which cancels the transaction; and an Update creating an item.
    transact(
        {
            "Update": {
                "TableName": "packets",
                "Key": packet_key("c5", 0),
                "UpdateExpression": "SET audio = :a",
                "ExpressionAttributeValues": {":a": {"S": "new"}},
            }
        },
        {"Delete": {"TableName": "packets", "Key": packet_key("c2", 0)}},
        {
            "Update": {
                "TableName": "calls",
                "Key": call_key("c1"),
                "UpdateExpression": "SET label = :l REMOVE attempts[0].x",
                "ExpressionAttributeValues": {":l": {"S": "half-way?"}},
            }
        },
    )
    # Two operations on one item: refused, after the first write went through.
    transact(
        {"Put": {"TableName": "packets", "Item": packet("c6", 0)}},
        {"Put": {"TableName": "calls", "Item": call_key("c7")}},
        {"Delete": {"TableName": "calls", "Key": call_key("c7")}},
    )
    # A table that does not exist, after a write.
    transact(
        {"Put": {"TableName": "packets", "Item": packet("c8", 0)}},
        {
            "ConditionCheck": {
                "TableName": "nowhere",
                "Key": call_key("c1"),
                "ConditionExpression": "attribute_exists(a)",
            }
        },
    )
    return answers


def test_transactions_answer_and_store_as_moto_does() -> None:
    answers = same_as_moto(transactions)
    committed, cancelled, failed, half_way, twice, no_table = answers[0::2]
    states = answers[1::2]

    assert "Error" not in committed
    packets, calls = states[0]["packets"], states[0]["calls"]
    assert packet("c1", 9, audio={"S": "a9"}) in packets
    assert packet("c1", 0, audio={"S": "a0"}) not in packets
    assert {"call_id": {"S": "c1"}, "state": {"S": "ENDED"}, "packets": {"N": "1"}}.items() <= calls[0].items()

    assert cancelled["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in cancelled["CancellationReasons"]] == [
        "None",
        "ConditionalCheckFailed",
        "None",
        "ConditionalCheckFailed",
        "ConditionalCheckFailed",
        "ConditionalCheckFailed",
    ]
    assert cancelled["CancellationReasons"][1]["Item"] == packet("c1", 1, audio={"S": "a1"})
    assert cancelled["CancellationReasons"][3]["Item"]["call_id"] == {"S": "c1"}
    assert "Item" not in cancelled["CancellationReasons"][4]  # ALL_OLD, but no item
    assert "Item" not in cancelled["CancellationReasons"][5]  # an item, but no ALL_OLD

    assert failed["Error"]["Code"] == "ValidationException"
    assert half_way["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in half_way["CancellationReasons"]] == ["None", "None", "TypeError"]
    assert twice["Error"]["Code"] == "ValidationException"
    assert no_table["Error"]["Code"] == "TransactionCanceledException"
    # Whatever failed left every item as it was.
    assert states[1:] == [states[0]] * 5


# ----------------------------------------------------------------- ConditionExpression


def conditions(client: Any) -> list[Any]:
    """One condition text met with other values it names, other values it does not, other
    names, a refused text twice: a cache keyed on less would answer one as another. (moto
    parses an UpdateItem's condition itself; these are the writes that use the parser the
    patch caches: transactions, PutItem, DeleteItem.)"""
    create_tables(client)
    client.put_item(TableName="calls", Item={"call_id": {"S": "c1"}, "state": {"S": "IN_PROGRESS"}})
    client.put_item(TableName="calls", Item={"call_id": {"S": "c2"}, "state": {"S": "ENDED"}, "label": {"S": "x"}})
    answers: list[Any] = []

    def check(call_id: str, state: str, name: str = "state") -> None:
        is_so = {
            "TableName": "calls",
            "Key": call_key(call_id),
            "ConditionExpression": "#s = :state",
            "ExpressionAttributeNames": {"#s": name},
            "ExpressionAttributeValues": {":state": {"S": state}},
        }
        mark = {"TableName": "packets", "Item": packet(call_id, len(answers), at={"S": f"t{len(answers)}"})}
        answers.append(call(client.transact_write_items, TransactItems=[{"ConditionCheck": is_so}, {"Put": mark}]))

    for call_id, state in (("c1", "IN_PROGRESS"), ("c2", "IN_PROGRESS"), ("c1", "ENDED"), ("c2", "ENDED")):
        check(call_id, state)
    check("c2", "ENDED", name="label")  # the same text and value as the last, other names
    check("c2", "x", name="label")
    check("c1", "x", name="label")
    for _ in range(2):  # STATE is a reserved word: refused, both times (by moto's own check)
        answers.append(
            call(
                client.put_item,
                TableName="packets",
                Item=packet("c3", 0),
                ConditionExpression="state = :s",
                ExpressionAttributeValues={":s": {"S": "IN_PROGRESS"}},
            )
        )
    # A transaction's update: values its update names and its condition does not (a clock),
    # then the values the condition names (c1 is IN_PROGRESS, then ENDED).
    steps = (("t1", "IN_PROGRESS", "ENDED"), ("t2", "IN_PROGRESS", "ENDED"), ("t3", "ENDED", "IN_PROGRESS"))
    for now, state, then in (*steps, ("t4", "IN_PROGRESS", "ENDED")):
        update = {
            "TableName": "calls",
            "Key": call_key("c1"),
            "UpdateExpression": "SET touched = :now, #s = :then",
            "ConditionExpression": "#s = :state",
            "ExpressionAttributeNames": {"#s": "state"},
            "ExpressionAttributeValues": {":now": {"S": now}, ":state": {"S": state}, ":then": {"S": then}},
        }
        answers.append(call(client.transact_write_items, TransactItems=[{"Update": update}]))
    answers.append(contents(client, "packets", "calls"))
    return answers


def test_conditions_answer_as_moto_does_whatever_values_and_names_they_use() -> None:
    answers = same_as_moto(conditions)
    checks, refused, updates, state = answers[:7], answers[7:9], answers[9:13], answers[13]

    assert ["Error" in a for a in checks] == [False, True, True, False, True, False, True]
    assert all(a["Error"]["Code"] == "TransactionCanceledException" for a in checks if "Error" in a)
    assert all(a["Error"]["Code"] == "ValidationException" for a in refused)
    # The first update ends c1; the second (the same condition, another clock) is refused;
    # the third puts it back; the fourth, the first's condition again, ends it with its own.
    assert ["Error" in a for a in updates] == [False, True, False, False]
    assert sorted(int(p["sequence"]["N"]) for p in state["packets"]) == [0, 3, 5]
    [c1] = [c for c in state["calls"] if c["call_id"] == {"S": "c1"}]
    assert (c1["state"], c1["touched"]) == ({"S": "ENDED"}, {"S": "t4"})


def test_a_condition_moto_refuses_is_refused_every_time_and_any_placeholder_it_reads_is_keyed() -> None:
    from moto.dynamodb import comparisons

    with moto_server.patches_applied():
        for _ in range(2):
            with pytest.raises(ValueError, match="Bad comparison"):
                comparisons.get_filter_expression("#s = = :v", {"#s": "state"}, {":v": {"S": "x"}})
        # moto's lexer reads ":v-1" as one placeholder: two values of it are two conditions.
        first = comparisons.get_filter_expression("#s = :v-1", {"#s": "state"}, {":v-1": {"S": "x"}})
        second = comparisons.get_filter_expression("#s = :v-1", {"#s": "state"}, {":v-1": {"S": "y"}})
        assert first is not second
        assert comparisons.get_filter_expression("#s = :v-1", {"#s": "state"}, {":v-1": {"S": "x"}}) is first


# ---------------------------------------------------------------------------- Query

CALLS = ("c1", "c2", "c3", "c4")


def queries(client: Any) -> list[Any]:
    create_tables(client)
    for n, call_id in enumerate(CALLS):
        for sequence in range(12):
            attrs: dict[str, Any] = {"audio": {"S": f"{call_id}-{sequence}"}}
            if sequence % 4:  # sparse index: some packets have no size
                attrs["size"] = {"N": str((sequence * 7 + n) % 5)}  # ties: sorted by sequence
            if sequence % 3 == 0:
                attrs["state"] = {"S": "ENDED" if sequence % 2 else "ACTIVE"}
                attrs["updated_at"] = {"S": f"2026-01-0{1 + sequence % 4}"}
            client.put_item(TableName="packets", Item=packet(call_id, sequence, **attrs))
    for call_id in CALLS:
        client.put_item(TableName="calls", Item={"call_id": {"S": call_id}})
    answers: list[Any] = []

    def query(**request: Any) -> None:
        answers.append(call(client.query, **request))

    def pages(**request: Any) -> None:
        page: dict[str, Any] = {}
        while True:
            page = call(client.query, **request, **page)
            answers.append(page)
            if "LastEvaluatedKey" not in page:
                break
            page = {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def ids(value: str) -> dict[str, Any]:
        return {":id": {"S": value}}

    for call_id in (*CALLS, "absent"):
        query(TableName="packets", KeyConditionExpression="call_id = :id", ExpressionAttributeValues=ids(call_id))
    query(
        TableName="packets",
        KeyConditionExpression="call_id = :id AND #q BETWEEN :lo AND :hi",
        ExpressionAttributeNames={"#q": "sequence"},
        ExpressionAttributeValues={**ids("c2"), ":lo": {"N": "3"}, ":hi": {"N": "8"}},
    )
    query(
        TableName="packets",
        KeyConditions={
            "call_id": {"AttributeValueList": [{"S": "c3"}], "ComparisonOperator": "EQ"},
            "sequence": {"AttributeValueList": [{"N": "5"}], "ComparisonOperator": "GE"},
        },
        ScanIndexForward=False,
    )
    query(
        TableName="packets",
        KeyConditionExpression="call_id = :id AND #q > :lo",
        ExpressionAttributeNames={"#q": "sequence"},
        ExpressionAttributeValues={**ids("c1"), ":lo": {"N": "6"}},
        ScanIndexForward=False,
        ProjectionExpression="#q, audio",
    )
    query(
        TableName="packets",
        KeyConditionExpression="call_id = :id",
        FilterExpression="attribute_exists(#z)",
        ExpressionAttributeNames={"#z": "size"},
        ExpressionAttributeValues=ids("c4"),
        Select="COUNT",
    )
    for forward in (True, False):
        pages(
            TableName="packets",
            KeyConditionExpression="call_id = :id",
            ExpressionAttributeValues=ids("c3"),
            ScanIndexForward=forward,
            Limit=5,
        )
    # The local index: the table's partition key, a number sort key, keys only.
    for call_id in CALLS:
        query(
            TableName="packets",
            IndexName="by-size",
            KeyConditionExpression="call_id = :id",
            ExpressionAttributeValues=ids(call_id),
        )
    query(
        TableName="packets",
        IndexName="by-size",
        KeyConditionExpression="call_id = :id AND #z >= :s",
        ExpressionAttributeNames={"#z": "size"},
        ExpressionAttributeValues={**ids("c2"), ":s": {"N": "2"}},
        ScanIndexForward=False,
    )
    pages(
        TableName="packets",
        IndexName="by-size",
        KeyConditionExpression="call_id = :id",
        ExpressionAttributeValues=ids("c1"),
        Limit=3,
    )
    # The global index, across partitions.
    for state in ("ACTIVE", "ENDED"):
        query(
            TableName="packets",
            IndexName="by-state",
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={":s": {"S": state}},
        )
    pages(
        TableName="packets",
        IndexName="by-state",
        KeyConditionExpression="#s = :s AND updated_at > :u",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":s": {"S": "ACTIVE"}, ":u": {"S": "2026-01-01"}},
        ScanIndexForward=False,
        Limit=2,
    )
    # A table without a sort key, and a query's mistakes.
    query(TableName="calls", KeyConditionExpression="call_id = :id", ExpressionAttributeValues=ids("c2"))
    query(
        TableName="packets",
        IndexName="nope",
        KeyConditionExpression="call_id = :id",
        ExpressionAttributeValues=ids("c1"),
    )
    query(TableName="packets", KeyConditionExpression="audio = :id", ExpressionAttributeValues=ids("c1"))
    # A query between writes reads what they wrote.
    client.delete_item(TableName="packets", Key=packet_key("c1", 4))
    client.put_item(TableName="packets", Item=packet("c1", 40, size={"N": "1"}))
    query(TableName="packets", KeyConditionExpression="call_id = :id", ExpressionAttributeValues=ids("c1"))
    query(
        TableName="packets",
        IndexName="by-size",
        KeyConditionExpression="call_id = :id",
        ExpressionAttributeValues=ids("c1"),
    )
    return answers


def test_queries_on_the_table_and_its_indexes_answer_as_moto_does() -> None:
    answers = same_as_moto(queries)

    by_call = answers[:4]
    assert [[int(i["sequence"]["N"]) for i in a["Items"]] for a in by_call] == [list(range(12))] * 4
    assert all(i["call_id"]["S"] == call_id for a, call_id in zip(by_call, CALLS, strict=True) for i in a["Items"])
    assert answers[4]["Items"] == []
    assert [i["sequence"]["N"] for i in answers[5]["Items"]] == ["3", "4", "5", "6", "7", "8"]
    assert [i["sequence"]["N"] for i in answers[6]["Items"]] == [str(s) for s in range(11, 4, -1)]
    assert answers[7]["Items"][0] == {"sequence": {"N": "11"}, "audio": {"S": "c1-11"}}
    assert answers[8]["Count"] == 9
    pages_forward, pages_backward = answers[9:12], answers[12:15]
    assert [len(p["Items"]) for p in pages_forward] == [5, 5, 2]
    assert [i for p in pages_backward for i in p["Items"]] == [i for p in pages_forward for i in p["Items"]][::-1]
    lsi = answers[15]["Items"]
    assert len(lsi) == 9 and set(lsi[0]) == {"call_id", "sequence", "size"}
    assert [int(i["size"]["N"]) for i in lsi] == sorted(int(i["size"]["N"]) for i in lsi)
    gsi = answers[23]["Items"]
    assert {i["call_id"]["S"] for i in gsi} == set(CALLS)  # across partitions
    assert [i["updated_at"]["S"] for i in gsi] == sorted(i["updated_at"]["S"] for i in gsi)
    assert answers[28]["Items"] == [{"call_id": {"S": "c2"}}]
    assert answers[29]["Error"]["Code"] == "ResourceNotFoundException"
    assert answers[30]["Error"]["Code"] == "ValidationException"
    assert [i["sequence"]["N"] for i in answers[31]["Items"]][-2:] == ["11", "40"]
    assert "4" not in [i["sequence"]["N"] for i in answers[31]["Items"]]
    assert answers[32]["Items"][3] == {"call_id": {"S": "c1"}, "sequence": {"N": "40"}, "size": {"N": "1"}}


# ---------------------------------------------------------------- UpdateExpression

NAMES = {"#s": "state", "#l": "log"}  # reserved words

UPDATES: list[tuple[str, dict[str, Any]]] = [
    ("SET #s = :s, updated_at = :u ADD attempts :one", {":s": {"S": "ACTIVE"}, ":u": {"S": "t1"}, ":one": {"N": "1"}}),
    ("SET #s = :s, updated_at = :u ADD attempts :one", {":s": {"S": "ENDED"}, ":u": {"S": "t2"}, ":one": {"N": "2"}}),
    ("SET #l = list_append(if_not_exists(#l, :empty), :entry)", {":empty": {"L": []}, ":entry": {"L": [{"S": "a"}]}}),
    ("SET #l = list_append(if_not_exists(#l, :empty), :entry)", {":empty": {"L": []}, ":entry": {"L": [{"S": "b"}]}}),
    ("SET meta.#s = :s, meta.n = meta.n + :one", {":s": {"S": "x"}, ":one": {"N": "1"}}),
    ("SET meta.#s = :s, meta.n = meta.n + :one", {":s": {"S": "y"}, ":one": {"N": "1"}}),
    ("REMOVE #l[0], updated_at", {}),
    ("ADD tags :t", {":t": {"SS": ["a", "b"]}}),
    ("DELETE tags :t", {":t": {"SS": ["a"]}}),
    ("ADD tags :t", {":t": {"SS": ["c"]}}),
    ("ADD #s :one", {":one": {"N": "1"}}),  # ADD to a string: refused, as often as asked
    ("ADD #s :one", {":one": {"N": "1"}}),
    ("SET #s = :s", {}),  # a value missing: refused
    # Refused by the checks that read the text alone, as often as asked:
    ("SET a = :one SET b = :one", {":one": {"N": "1"}}),  # two SET clauses
    ("SET a = :one SET b = :one", {":one": {"N": "1"}}),
    ("SET meta.n = :one, meta = :m", {":one": {"N": "1"}, ":m": {"M": {}}}),  # overlapping paths
    ("SET meta.n = :one, meta = :m", {":one": {"N": "1"}, ":m": {"M": {}}}),
    # One text, its "#k" naming an attribute (accepted), the table's key (refused), then the
    # attribute again (KEY_NAMES): what passed under some names says nothing of others.
    ("SET #k = :k", {":k": {"S": "x"}}),
    ("SET #k = :k", {":k": {"S": "x"}}),
    ("SET #k = :k", {":k": {"S": "x"}}),
]
KEY_NAMES = ("kind", "call_id", "kind")
RETURNS = ("ALL_NEW", "UPDATED_OLD", "NONE", "ALL_OLD", "UPDATED_NEW")


def updates(client: Any) -> list[Any]:
    create_tables(client)
    answers: list[Any] = []
    for call_id in ("c1", "c2"):
        key_names = iter(KEY_NAMES)
        client.put_item(TableName="calls", Item={"call_id": {"S": call_id}, "meta": {"M": {"n": {"N": "0"}}}})
        for n, (expression, values) in enumerate(UPDATES):
            request: dict[str, Any] = {"TableName": "calls", "Key": call_key(call_id), "UpdateExpression": expression}
            names = {name: NAMES[name] for name in NAMES if name in expression}
            if "#k" in expression:
                names["#k"] = next(key_names)
            if names:
                request["ExpressionAttributeNames"] = names
            if values:
                request["ExpressionAttributeValues"] = values
            answers.append(call(client.update_item, **request, ReturnValues=RETURNS[n % len(RETURNS)]))
    answers.append(contents(client, "calls"))
    return answers


def test_update_expressions_answer_as_moto_does() -> None:
    answers = same_as_moto(updates)

    assert answers[0]["Attributes"]["attempts"] == {"N": "1"}
    assert answers[1]["Attributes"] == {"state": {"S": "ACTIVE"}, "updated_at": {"S": "t1"}, "attempts": {"N": "1"}}
    codes = [None] * 10 + ["ValidationException"] * 7 + [None, "ValidationException", None]
    assert [a.get("Error", {}).get("Code") for a in answers[: len(UPDATES)]] == codes
    assert '"SET" section can only be used once' in answers[13]["Error"]["Message"]
    assert "Two document paths overlap" in answers[15]["Error"]["Message"]
    assert "Cannot update attribute call_id" in answers[18]["Error"]["Message"]
    items = answers[-1]["calls"]
    assert len(items) == 2
    assert items[0] == {
        "call_id": {"S": "c1"},
        "state": {"S": "ENDED"},
        "attempts": {"N": "3"},
        "log": {"L": [{"S": "b"}]},
        "meta": {"M": {"n": {"N": "2"}, "state": {"S": "y"}}},
        "tags": {"SS": ["b", "c"]},
        "kind": {"S": "x"},
    }
    assert items[1] == {**items[0], "call_id": {"S": "c2"}}


def shape(value: Any) -> Any:
    """Everything in a parse tree but its parent links, as plain values."""
    if isinstance(value, Node):
        return type(value).__name__, {k: shape(v) for k, v in vars(value).items() if k != "parent"}
    if isinstance(value, list | tuple):
        return [shape(v) for v in value]
    return repr(value)


def test_an_update_expression_is_parsed_once_and_its_tree_never_changes() -> None:
    parse = UpdateExpressionParser.make  # moto's own
    expressions = sorted({expression for expression, _ in UPDATES[:10]})
    with moto_server.patches_applied(), mock_aws():
        trees = {e: UpdateExpressionParser.make(e) for e in expressions}
        before = {e: shape(t) for e, t in trees.items()}
        updates(_client())
        for e in expressions:
            assert UpdateExpressionParser.make(e) is trees[e]
            assert shape(trees[e]) == before[e] == shape(parse(e))


def test_the_checks_that_read_an_update_s_text_alone_run_once_per_text_names_and_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto.dynamodb.parsing import validators

    checked: list[str] = []
    original = validators.ActionCountValidator.traverse

    def traverse(self: Any, node: Any) -> Any:
        checked.append(node.to_str() if hasattr(node, "to_str") else type(node).__name__)
        return original(self, node)

    monkeypatch.setattr(validators.ActionCountValidator, "traverse", traverse)
    with moto_server.patches_applied(), mock_aws():
        client = _client()
        create_tables(client)

        def update(table: str, key: dict[str, Any], name: str) -> None:
            client.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET #a = :v ADD n :one",
                ExpressionAttributeNames={"#a": name},
                ExpressionAttributeValues={":v": {"S": "x"}, ":one": {"N": "1"}},
            )

        for _ in range(5):
            update("calls", call_key("c1"), "note")
        assert len(checked) == 1
        update("calls", call_key("c1"), "other")  # other names
        update("packets", packet_key("c1", 1), "note")  # another table's keys
        assert len(checked) == 3
        assert client.get_item(TableName="calls", Key=call_key("c1"))["Item"]["n"] == {"N": "6"}


# ------------------------------------------------------------- answers with items

ITEM = {
    "call_id": {"S": "c1"},
    "sequence": {"N": "3"},
    "timestamp": {"N": "1700000000.020"},
    "ok": {"BOOL": True},
    "nothing": {"NULL": True},
    "tags": {"SS": ["a", "b"]},
    "scores": {"NS": ["1", "2.5"]},
    "attempts": {"L": [{"M": {"round": {"N": "1"}, "at": {"S": "2026-01-01T00:00:00Z"}}}]},
    "sentiment": {"M": {"label": {"S": "NEGATIVE"}, "score": {"N": "-0.61"}}},
}


def item_answers(client: Any) -> list[Any]:
    create_tables(client)
    client.put_item(TableName="packets", Item=ITEM)
    client.put_item(TableName="packets", Item={**packet("c1", 4), "audio": {"B": b"\x00hello"}, "bits": {"BS": [b"a"]}})
    client.put_item(TableName="calls", Item={"call_id": {"S": "c1"}, "n": {"N": "1"}})
    return [
        call(client.get_item, TableName="packets", Key=packet_key("c1", 3)),
        call(client.get_item, TableName="packets", Key=packet_key("c1", 4)),
        call(client.get_item, TableName="packets", Key=packet_key("c1", 5)),
        call(
            client.query,
            TableName="packets",
            KeyConditionExpression="call_id = :c",
            ExpressionAttributeValues={":c": {"S": "c1"}},
        ),
        call(client.scan, TableName="packets"),
        call(client.scan, TableName="calls", Limit=1),
        call(
            client.update_item,
            TableName="calls",
            Key=call_key("c1"),
            UpdateExpression="SET audio = :a ADD n :one",
            ExpressionAttributeValues={":a": {"B": b"\xffbytes"}, ":one": {"N": "1"}},
            ReturnValues="ALL_NEW",
        ),
        call(
            client.batch_get_item,
            RequestItems={
                "packets": {"Keys": [packet_key("c1", 3), packet_key("c1", 4)]},
                "calls": {"Keys": [call_key("c1"), call_key("c9")]},
            },
        ),
    ]


def test_answers_that_carry_items_are_moto_s_own() -> None:
    answers = same_as_moto(item_answers)

    assert answers[0]["Item"] == ITEM
    assert answers[1]["Item"]["audio"] == {"B": b"\x00hello"}
    assert answers[2] == {}
    assert answers[3]["Count"] == 2
    assert answers[6]["Attributes"]["audio"] == {"B": b"\xffbytes"}
    assert len(answers[7]["Responses"]["packets"]) == 2

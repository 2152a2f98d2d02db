"""The local stack's moto changes that are pure functions: same answers as moto's own, computed once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from moto.core.responses import ActionContext
from moto.core.serialize import get_serializer_class
from moto.core.utils import get_service_model
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.responses import DynamoResult

from devstack import moto_server

ITEM = {
    "call_id": {"S": "c1"},
    "sequence": {"N": "3"},
    "timestamp": {"N": "1700000000.02"},
    "ok": {"BOOL": True},
    "nothing": {"NULL": True},
    "tags": {"SS": ["a", "b"]},
    "scores": {"NS": ["1", "2.5"]},
    "attempts": {"L": [{"M": {"round": {"N": "1"}, "started_at": {"S": "2026-01-01T00:00:00.000000Z"}}}]},
    "sentiment": {"M": {"label": {"S": "NEGATIVE"}, "score": {"N": "-0.61"}}},
}

RESULTS: dict[str, dict[str, Any]] = {
    "Query": {"Count": 2, "ScannedCount": 2, "Items": [ITEM, {"call_id": {"S": "c1"}, "sequence": {"N": "4"}}]},
    "GetItem": {"Item": ITEM},
    "UpdateItem": {"Attributes": ITEM},
    "Scan": {"Count": 1, "ScannedCount": 1, "Items": [ITEM], "LastEvaluatedKey": {"call_id": {"S": "c1"}}},
    "BatchGetItem": {
        "Responses": {"CallsTable": [ITEM]},
        "UnprocessedKeys": {},
        "ConsumedCapacity": [{"TableName": "CallsTable", "CapacityUnits": 1.0}],
    },
}


class _NoSerializer:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("went through the service model")


def _context(operation: str, serializer: Any = None) -> ActionContext:
    service = get_service_model("dynamodb")
    serializer = serializer or get_serializer_class("dynamodb", "json")
    return ActionContext(service, service.operation_model(operation), serializer, object())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def moto_execute_result() -> Iterator[Any]:
    """moto's own serialisation, kept aside while the patch replaces it."""
    original = DynamoResult.execute_result
    moto_server.patch_item_responses()
    try:
        yield original
    finally:
        DynamoResult.execute_result = original  # type: ignore[method-assign]


@pytest.mark.parametrize("operation", sorted(RESULTS))
def test_an_answer_with_items_is_the_json_moto_would_write(operation: str, moto_execute_result: Any) -> None:
    result = DynamoResult(RESULTS[operation])
    status, headers, body = result.execute_result(_context(operation, serializer=_NoSerializer))
    their_status, their_headers, their_body = moto_execute_result(result, _context(operation))
    assert (status, headers["Content-Type"]) == (their_status, their_headers["Content-Type"])
    assert json.loads(body) == json.loads(their_body)


def test_binary_attributes_are_left_to_moto_which_base64_encodes_them(moto_execute_result: Any) -> None:
    result = DynamoResult({"Item": {"call_id": DynamoType({"S": "c1"}), "audio": DynamoType({"B": "aGVsbG8="})}})
    answer: Any = result.result
    assert answer["Item"]["audio"]["B"] == b"hello"  # raw bytes: plain JSON cannot hold them
    _, _, body = result.execute_result(_context("GetItem"))
    assert json.loads(body)["Item"] == {"call_id": {"S": "c1"}, "audio": {"B": "aGVsbG8="}}

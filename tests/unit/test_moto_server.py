"""The local stack's moto changes: applied only to the moto they were written for, and undone
for the tests after them; the item answers are moto's own JSON; the client token ledger.

The patches' answers through boto3 are compared with unpatched moto's in
test_moto_patch_equivalence.py and test_moto_patch_tokens.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import moto
import pytest
from moto.core.responses import ActionContext
from moto.core.serialize import get_serializer_class
from moto.core.utils import get_service_model
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoResult

from devstack import moto_server

REQUIREMENTS_DEV = Path(__file__).resolve().parents[2] / "requirements-dev.txt"


def moto_attributes() -> dict[tuple[type, str], Any]:
    """What the patched attributes of moto's classes are now."""
    return {(owner, name): vars(owner).get(name) for owner, name in moto_server._patch_targets()}


def test_the_patches_are_for_the_pinned_moto_which_is_installed() -> None:
    pinned = re.search(r"^moto\[server\]==(\S+)$", REQUIREMENTS_DEV.read_text(), re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == moto_server.MOTO_VERSION == moto.__version__
    moto_server.check_moto()


def test_another_moto_is_refused_before_anything_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    before = moto_attributes()
    monkeypatch.setattr(moto, "__version__", "5.2.6")
    with pytest.raises(
        RuntimeError, match=r"moto 5\.2\.6 is installed, the patches are for moto 5\.2\.5: .*devstack/moto_server\.py"
    ):
        moto_server.apply_patches()
    assert moto_attributes() == before


def test_a_replaced_attribute_that_moved_is_refused_before_anything_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Table, "all_items")
    before = moto_attributes()
    with pytest.raises(
        RuntimeError, match=r"moto\.dynamodb\.models\.table\.Table\.all_items is gone: .*devstack/moto_server\.py"
    ):
        moto_server.apply_patches()
    assert moto_attributes() == before


def test_a_changed_table_query_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def query(self: Any, hash_key: Any, range_comparison: Any, **kwargs: Any) -> None:
        """No index_name where the partition patch looks for it."""

    monkeypatch.setattr(Table, "query", query)
    with pytest.raises(RuntimeError, match=r"Table\.query.* changed: .*devstack/moto_server\.py"):
        moto_server.apply_patches()


def test_patches_applied_replaces_every_target_and_restores_it() -> None:
    before = moto_attributes()
    with moto_server.patches_applied():
        during = moto_attributes()
        assert all(during[target] is not before[target] for target in before)
    assert moto_attributes() == before


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_remembered_for_ten_minutes_after_its_first_completion() -> None:
    clock = Clock()
    tokens = moto_server.ClientRequestTokens(clock)
    tokens.record("t", b"digest", None)  # cancelled
    clock.now += 599
    tokens.record("t", b"digest", "answer")  # run again and committed: the window stands
    use = tokens.get("t")
    assert use is not None and (use.digest, use.answer) == (b"digest", "answer")
    clock.now += 1
    assert tokens.get("t") is None


def test_expired_tokens_are_forgotten_and_the_ledger_is_bounded() -> None:
    clock = Clock()
    tokens = moto_server.ClientRequestTokens(clock)
    for n in range(3):
        tokens.record(n, b"d", "a")
        clock.now += 300
    assert len(tokens) == 2  # the first is 900 s old: gone without being asked for
    tokens.MAX_TOKENS = 3
    for n in range(3, 6):
        tokens.record(n, b"d", "a")
    assert len(tokens) == 3
    assert [tokens.get(n) is not None for n in range(6)] == [False, False, False, True, True, True]


def test_the_request_digest_leaves_out_the_token_and_the_order_of_keys() -> None:
    a = moto_server.request_digest(
        b'{"TransactItems": [], "ClientRequestToken": "x", "ReturnConsumedCapacity": "NONE"}'
    )
    b = moto_server.request_digest('{"ReturnConsumedCapacity": "NONE", "TransactItems": [], "ClientRequestToken": "y"}')
    c = moto_server.request_digest(
        '{"ReturnConsumedCapacity": "TOTAL", "TransactItems": [], "ClientRequestToken": "x"}'
    )
    assert a == b != c


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
    """moto's own serialisation, kept aside while the patches replace it."""
    original = DynamoResult.execute_result
    with moto_server.patches_applied():
        assert DynamoResult.execute_result is not original
        yield original


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

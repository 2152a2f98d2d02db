"""CallStore on DynamoDB: a calls table (one item a call) and a packets table (one item a packet)."""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from typing import Any

from botocore.exceptions import ClientError

from callcore.adapters.aws_errors import RETRYABLE_CODES, dependency, error_code
from callcore.domain.errors import CallNotFoundError, DependencyUnavailableError, InvalidTransitionError
from callcore.domain.model import (
    AIResult,
    Arrival,
    AttemptRecord,
    Call,
    CallState,
    Packet,
    Sentiment,
    can_transition,
    is_valid_call_id,
)
from callcore.ports import CallPage, PacketWrite

# botocore clients are generated at run time; the stubs package is not worth a dependency.
DynamoDBClient = Any

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]

STATE_INDEX = "by-state"

# A transaction that meets another one on the same call item is cancelled with
# TransactionConflict; it is safe to try again at once, a few times.
_CONFLICT_RETRIES = 5


def _s(value: str) -> AttributeValue:
    return {"S": value}


def _n(value: int | float) -> AttributeValue:
    return {"N": repr(value)}


def _seconds(value: float) -> AttributeValue:
    """A timestamp to the microsecond: within DynamoDB's number range, whatever the float."""
    return _n(round(value, 6))


def _num(av: AttributeValue) -> int | float:
    text = av["N"]
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _int(item: Item, name: str, default: int = 0) -> int:
    return int(item[name]["N"]) if name in item else default


def _str(item: Item, name: str) -> str | None:
    return item[name]["S"] if name in item else None


def call_from_item(item: Item) -> Call:
    sentiment = None
    if "sentiment" in item:
        raw = item["sentiment"]["M"]
        sentiment = Sentiment(label=raw["label"]["S"], score=float(_num(raw["score"])))
    attempts = [
        AttemptRecord(
            round=int(a["M"]["round"]["N"]),
            number=index + 1,
            started_at=a["M"]["started_at"]["S"],
            error=_str(a["M"], "error"),
        )
        for index, a in enumerate(item.get("attempts", {}).get("L", []))
    ]
    return Call(
        call_id=item["call_id"]["S"],
        state=CallState(item["state"]["S"]),
        created_at=item["created_at"]["S"],
        updated_at=item["updated_at"]["S"],
        round=_int(item, "round"),
        enqueued_round=_int(item, "enqueued_round"),
        duplicates=_int(item, "duplicates"),
        last_sequence=_int(item, "last_sequence") if "last_sequence" in item else None,
        ai_attempts=_int(item, "ai_attempts"),
        ai_last_error=_str(item, "ai_last_error"),
        transcript=_str(item, "transcript"),
        sentiment=sentiment,
        failure_reason=_str(item, "failure_reason"),
        attempts=attempts,
    )


def packet_from_item(item: Item) -> Packet:
    return Packet(sequence=int(item["sequence"]["N"]), data=item["data"]["S"], timestamp=float(_num(item["timestamp"])))


def encode_cursor(key: Item) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, state: CallState) -> Item:
    """The ExclusiveStartKey a cursor encodes, checked so that a forged one is a 422, not a DynamoDB error."""
    invalid = ValueError("cursor is not one this API returned for this state")
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise invalid from exc
    if not isinstance(raw, dict) or set(raw) != {"call_id", "state", "updated_at"}:
        raise invalid
    if not all(isinstance(v, dict) and set(v) == {"S"} and isinstance(v["S"], str) for v in raw.values()):
        raise invalid
    if raw["state"]["S"] != state.value or not is_valid_call_id(raw["call_id"]["S"]):
        raise invalid
    return raw


class DynamoDBCallStore:
    def __init__(self, client: DynamoDBClient, calls_table: str, packets_table: str) -> None:
        self._ddb = client
        self._calls = calls_table
        self._packets = packets_table

    def add_packet(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        """Store the packet if its sequence is new and its call IN_PROGRESS, atomically.

        One TransactWriteItems: put the packet, and check that the call is IN_PROGRESS.
        End's conditional write on the call item serialises with it, so a stored packet
        is always one the worker will read. No read happens first; on a cancellation the
        old items come back in the cancellation reasons. A call's first packet finds no
        call: a second transaction then creates the call with the packet. Sequence 0 is
        nearly always a call's first packet, so it goes straight to that transaction,
        which is just as correct for a call that exists (it changes nothing on it).
        """
        put_packet = {
            "Put": {
                "TableName": self._packets,
                "Item": {
                    "call_id": _s(call_id),
                    "sequence": _n(packet.sequence),
                    "data": _s(packet.data),
                    "timestamp": _seconds(packet.timestamp),
                    "received_at": _n(received_at_ns),
                },
                "ConditionExpression": "attribute_not_exists(#seq)",
                "ExpressionAttributeNames": {"#seq": "sequence"},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        in_progress = "#state = :in_progress"
        key = {"call_id": _s(call_id)}
        names = {"#state": "state"}
        call_is_open = {
            "ConditionCheck": {
                "TableName": self._calls,
                "Key": key,
                "ConditionExpression": in_progress,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {":in_progress": _s(CallState.IN_PROGRESS.value)},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        if packet.sequence != 0:
            reasons = self._transact([put_packet, call_is_open])
            if reasons is None:
                return PacketWrite(stored=True)
            call_reason = reasons[1]
            if call_reason.get("Code") != "ConditionalCheckFailed" or "Item" in call_reason:
                return self._refusal(call_id, packet.sequence, reasons)
        # No call yet: create it with this packet. Racing first packets all get here; the
        # condition lets each of them through once the first has created the call.
        open_call = {
            "Update": {
                "TableName": self._calls,
                "Key": key,
                "UpdateExpression": (
                    "SET #state = if_not_exists(#state, :in_progress), "
                    "created_at = if_not_exists(created_at, :now), "
                    "updated_at = if_not_exists(updated_at, :now)"
                ),
                "ConditionExpression": f"attribute_not_exists(call_id) OR {in_progress}",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {":in_progress": _s(CallState.IN_PROGRESS.value), ":now": _s(now)},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        reasons = self._transact([put_packet, open_call])
        return PacketWrite(stored=True) if reasons is None else self._refusal(call_id, packet.sequence, reasons)

    def _transact(self, items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Run a transaction; None when it committed, else the cancellation reasons of failed conditions."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with dependency("DynamoDB"):
                    self._ddb.transact_write_items(TransactItems=items)
                return None
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons: list[dict[str, Any]] = exc.response.get("CancellationReasons", [])
                codes = {r.get("Code") for r in reasons} - {"None", None}
                if codes and codes <= {"ConditionalCheckFailed"}:
                    return reasons
                if codes <= RETRYABLE_CODES:
                    # Another transaction held the call item, or a throttle: try again shortly.
                    time.sleep(random.uniform(0, 0.005 * 2**attempt))
                    continue
                raise
        raise DependencyUnavailableError("DynamoDB", "transaction kept conflicting or being throttled")

    def _refusal(self, call_id: str, sequence: int, reasons: list[dict[str, Any]]) -> PacketWrite:
        packet_reason, call_reason = reasons[0], reasons[1]
        existing = None
        if packet_reason.get("Code") == "ConditionalCheckFailed":
            if "Item" in packet_reason:
                existing = packet_from_item(packet_reason["Item"])
            else:
                # Servers that do not return the old item: read it, off the happy path.
                existing = self._get_packet(call_id, sequence)
        state = None
        if call_reason.get("Code") == "ConditionalCheckFailed":
            state = CallState(call_reason["Item"]["state"]["S"])
        return PacketWrite(stored=False, existing=existing, call_state=state)

    def _get_packet(self, call_id: str, sequence: int) -> Packet | None:
        with dependency("DynamoDB"):
            response = self._ddb.get_item(
                TableName=self._packets,
                Key={"call_id": _s(call_id), "sequence": _n(sequence)},
                ConsistentRead=True,
            )
        item = response.get("Item")
        return packet_from_item(item) if item else None

    def count_duplicate(self, call_id: str) -> None:
        try:
            with dependency("DynamoDB"):
                self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression="ADD duplicates :one",
                    ConditionExpression="attribute_exists(call_id)",
                    ExpressionAttributeValues={":one": _n(1)},
                )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            raise CallNotFoundError(call_id) from exc

    def mark_enqueued(self, call_id: str, round: int) -> None:
        try:
            with dependency("DynamoDB"):
                self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression="SET enqueued_round = :round",
                    ConditionExpression="#round = :round",
                    ExpressionAttributeNames={"#round": "round"},
                    ExpressionAttributeValues={":round": _n(round)},
                )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            # A newer round began meanwhile; its own end or retry marks it.

    def transition(
        self,
        call_id: str,
        *,
        source: CallState,
        target: CallState,
        now: str,
        new_round: bool = False,
        expected_round: int | None = None,
        last_sequence: int | None = None,
        failure_reason: str | None = None,
        result: AIResult | None = None,
    ) -> Call:
        if not can_transition(source, target):
            raise InvalidTransitionError(call_id, source, target)
        sets = ["#state = :target", "updated_at = :now"]
        removes = []
        names = {"#state": "state"}
        values: dict[str, AttributeValue] = {":target": _s(target.value), ":source": _s(source.value), ":now": _s(now)}
        condition = "#state = :source"
        if expected_round is not None:
            condition += " AND #round = :expected_round"
            values[":expected_round"] = _n(expected_round)
            names["#round"] = "round"
        if new_round:
            sets.append("#round = if_not_exists(#round, :zero) + :one")
            values |= {":zero": _n(0), ":one": _n(1)}
            names["#round"] = "round"
        if last_sequence is not None:
            sets.append("last_sequence = :last")
            values[":last"] = _n(last_sequence)
        if failure_reason is not None:
            sets.append("failure_reason = :reason")
            values[":reason"] = _s(failure_reason)
        elif target is CallState.COMPLETED:
            # Kept through an operator retry, so that a retry that cannot reach SQS puts
            # the call back to FAILED with its reason; shown only while FAILED.
            removes.append("failure_reason")
        if result is not None:
            sets += ["transcript = :transcript", "sentiment = :sentiment"]
            values[":transcript"] = _s(result.transcript)
            values[":sentiment"] = {
                "M": {"label": _s(result.sentiment.label), "score": _n(float(result.sentiment.score))}
            }
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            with dependency("DynamoDB"):
                response = self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            if not old:
                raise CallNotFoundError(call_id) from exc
            raise InvalidTransitionError(call_id, CallState(old["state"]["S"]), target, call_from_item(old)) from exc
        return call_from_item(response["Attributes"])

    def start_attempt(self, call_id: str, round: int, *, now: str) -> int | None:
        try:
            with dependency("DynamoDB"):
                response = self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression=(
                        "SET ai_attempts = if_not_exists(ai_attempts, :zero) + :one, "
                        "attempts = list_append(if_not_exists(attempts, :empty), :attempt)"
                    ),
                    ConditionExpression="#state = :processing AND #round = :round",
                    ExpressionAttributeNames={"#state": "state", "#round": "round"},
                    ExpressionAttributeValues={
                        ":zero": _n(0),
                        ":one": _n(1),
                        ":empty": {"L": []},
                        # An entry's number is its place in the list (ai_attempts - 1), so it
                        # is not stored.
                        ":attempt": {"L": [{"M": {"round": _n(round), "started_at": _s(now)}}]},
                        ":processing": _s(CallState.PROCESSING_AI.value),
                        ":round": _n(round),
                    },
                    ReturnValues="UPDATED_NEW",
                )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return None
        return int(response["Attributes"]["ai_attempts"]["N"])

    def record_attempt_error(self, call_id: str, attempt: int, error: str) -> None:
        with dependency("DynamoDB"):
            self._ddb.update_item(
                TableName=self._calls,
                Key={"call_id": _s(call_id)},
                UpdateExpression=f"SET attempts[{attempt - 1}].#error = :error, ai_last_error = :error",
                ConditionExpression="attribute_exists(call_id)",
                ExpressionAttributeNames={"#error": "error"},
                ExpressionAttributeValues={":error": _s(error[:1000])},
            )

    def revert_transition(self, call_id: str, *, current: CallState, round: int, back_to: CallState, now: str) -> None:
        try:
            with dependency("DynamoDB"):
                self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression="SET #state = :back, updated_at = :now",
                    ConditionExpression="#state = :current AND #round = :round",
                    ExpressionAttributeNames={"#state": "state", "#round": "round"},
                    ExpressionAttributeValues={
                        ":back": _s(back_to.value),
                        ":current": _s(current.value),
                        ":round": _n(round),
                        ":now": _s(now),
                    },
                )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            # Something else moved the call on; there is nothing of ours left to undo.

    def get_call(self, call_id: str) -> Call | None:
        with dependency("DynamoDB"):
            response = self._ddb.get_item(TableName=self._calls, Key={"call_id": _s(call_id)}, ConsistentRead=True)
        item = response.get("Item")
        return call_from_item(item) if item else None

    def arrivals(self, call_id: str) -> list[Arrival]:
        return [
            Arrival(sequence=int(item["sequence"]["N"]), received_at_ns=_int(item, "received_at"))
            for item in self._query_packets(call_id, projection="#seq, received_at")
        ]

    def packets(self, call_id: str) -> list[Packet]:
        """Every stored packet of the call, in sequence order."""
        return [packet_from_item(item) for item in self._query_packets(call_id)]

    def _query_packets(self, call_id: str, projection: str | None = None) -> list[Item]:
        kwargs: dict[str, Any] = {
            "TableName": self._packets,
            "KeyConditionExpression": "call_id = :id",
            "ExpressionAttributeValues": {":id": _s(call_id)},
            "ConsistentRead": True,
        }
        if projection:
            kwargs |= {"ProjectionExpression": projection, "ExpressionAttributeNames": {"#seq": "sequence"}}
        items: list[Item] = []
        with dependency("DynamoDB"):
            while True:
                response = self._ddb.query(**kwargs)
                items.extend(response.get("Items", []))
                if "LastEvaluatedKey" not in response:
                    return items
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def list_calls(self, state: CallState, *, limit: int, cursor: str | None) -> CallPage:
        kwargs: dict[str, Any] = {
            "TableName": self._calls,
            "IndexName": STATE_INDEX,
            "KeyConditionExpression": "#state = :state",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {":state": _s(state.value)},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            kwargs["ExclusiveStartKey"] = decode_cursor(cursor, state)
        try:
            with dependency("DynamoDB"):
                response = self._ddb.query(**kwargs)
        except ClientError as exc:
            if cursor and error_code(exc) == "ValidationException":
                raise ValueError("cursor is not one this API returned") from exc
            raise
        calls = [
            Call(
                call_id=item["call_id"]["S"],
                state=CallState(item["state"]["S"]),
                created_at=item.get("created_at", item["updated_at"])["S"],
                updated_at=item["updated_at"]["S"],
                failure_reason=_str(item, "failure_reason"),
                round=_int(item, "round"),
                enqueued_round=_int(item, "enqueued_round"),
            )
            for item in response.get("Items", [])
        ]
        last = response.get("LastEvaluatedKey")
        return CallPage(calls=calls, next_cursor=encode_cursor(last) if last else None)

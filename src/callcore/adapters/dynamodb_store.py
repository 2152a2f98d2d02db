"""CallStore on DynamoDB: a calls table (one item a call), and a call's packets in one of two layouts.

A call's first packet fixes its layout, noted on the call item: one item per packet in the
packets table (the single route), or one item per slot of ten sequences in the slots
table (the batch route, ``callcore.adapters.packet_slots``). Every later packet is stored
in its call's layout, whichever route it came by, so that a sequence is stored at most
once; both are read back as one call's packets.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from callcore.adapters import packet_slots
from callcore.adapters.aws_errors import RETRYABLE_CODES, dependency, error_code
from callcore.domain.errors import (
    CallNotFoundError,
    CallTooLargeError,
    DependencyUnavailableError,
    InvalidTransitionError,
)
from callcore.domain.model import (
    AIResult,
    Arrival,
    Attempt,
    AttemptRecord,
    Call,
    CallState,
    Packet,
    PacketStats,
    Recording,
    Sentiment,
    TransitionRule,
    is_valid_call_id,
)
from callcore.ports import MAX_BATCHED_PACKET_BYTES, CallPage, PacketWrite

# botocore clients are generated at run time; the stubs package is not worth a dependency.
DynamoDBClient = Any

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]

STATE_INDEX = "by-state"
# Packets by arrival, keys only: a call's arrival order without reading its audio.
ARRIVAL_INDEX = "by-arrival"

# A write that meets a transaction on the same item fails with TransactionConflict(Exception),
# which botocore does not retry: the other transaction is over within milliseconds, so
# trying again shortly, a few times, is what DynamoDB's documentation advises.
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling
_CONFLICT_RETRIES = 5
_CONFLICT_CODES = frozenset({"TransactionConflictException", "TransactionConflict", "TransactionInProgressException"})

_T = TypeVar("_T")

# The packets and slots tables' TTL attribute (template.yaml): epoch seconds.
EXPIRES_AT = "expires_at"
# The call item's snapshot of its packet statistics (CallStore.note_packet_stats).
PACKET_STATS = "packet_stats"

# On the call item of a call whose packets live in slots; absent: one item per packet.
_LAYOUT = "layout"
_SLOTS = "slots"
_CCF = "ConditionalCheckFailed"


def _is_slotted(call_item: Item | None) -> bool:
    return call_item is not None and _str(call_item, _LAYOUT) == _SLOTS


def _conflict_pause(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.005 * 2**attempt))


def _is_item_too_large(exc: ClientError) -> bool:
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return error_code(exc) == "ValidationException" and "size" in message.lower()


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
        enqueued_at=_str(item, "enqueued_at"),
        duplicates=_int(item, "duplicates"),
        last_sequence=_int(item, "last_sequence") if "last_sequence" in item else None,
        ai_attempts=_int(item, "ai_attempts"),
        ai_last_error=_str(item, "ai_last_error"),
        transcript=_str(item, "transcript"),
        transcript_truncated=item.get("transcript_truncated", {}).get("BOOL", False),
        sentiment=sentiment,
        failure_reason=_str(item, "failure_reason"),
        attempts=attempts,
        recording=_recording(item),
        packet_stats=_packet_stats(item),
    )


def _recording(item: Item) -> Recording | None:
    raw = item.get("recording", {}).get("M")
    if not raw:
        return None
    return Recording(key=raw["key"]["S"], duration_s=float(_num(raw["duration_s"])), bytes=int(raw["bytes"]["N"]))


def _packet_stats(item: Item) -> PacketStats | None:
    raw = item.get(PACKET_STATS, {}).get("M")
    if not raw:
        return None
    highest = raw["highest_sequence"]
    return PacketStats(
        received=int(raw["received"]["N"]),
        duplicates=_int(item, "duplicates"),
        out_of_order=int(raw["out_of_order"]["N"]),
        highest_sequence=None if "NULL" in highest else int(highest["N"]),
        missing=[int(v["N"]) for v in raw["missing"]["L"]],
        missing_count=int(raw["missing_count"]["N"]),
    )


def _packet_stats_value(stats: PacketStats) -> AttributeValue:
    highest: AttributeValue = {"NULL": True} if stats.highest_sequence is None else _n(stats.highest_sequence)
    return {
        "M": {
            "received": _n(stats.received),
            "out_of_order": _n(stats.out_of_order),
            "highest_sequence": highest,
            "missing": {"L": [_n(s) for s in stats.missing]},
            "missing_count": _n(stats.missing_count),
        }
    }


def _noted_values(recording: Recording | None, packet_stats: PacketStats | None) -> dict[str, AttributeValue]:
    """The call item's attributes for a recording and packet statistics an attempt noted."""
    values: dict[str, AttributeValue] = {}
    if recording is not None:
        values["recording"] = {
            "M": {
                "key": _s(recording.key),
                "duration_s": _seconds(recording.duration_s),
                "bytes": _n(recording.bytes),
            }
        }
    if packet_stats is not None:
        values[PACKET_STATS] = _packet_stats_value(packet_stats)
    return values


def _set_noted(
    sets: list[str],
    names: dict[str, str],
    values: dict[str, AttributeValue],
    recording: Recording | None,
    packet_stats: PacketStats | None,
) -> None:
    """Add the SET clauses of ``_noted_values`` to an update's expression."""
    for i, (name, value) in enumerate(_noted_values(recording, packet_stats).items()):
        sets.append(f"#noted{i} = :noted{i}")
        names[f"#noted{i}"], values[f":noted{i}"] = name, value


def packet_from_item(item: Item) -> Packet:
    return Packet(
        sequence=int(item["sequence"]["N"]),
        data=item["data"]["S"],
        timestamp=float(_num(item["timestamp"])),
        audio_format=_str(item, "audio_format"),
        received_at_ns=_int(item, "received_at"),
    )


def _slot_packets(item: Item) -> Iterator[packet_slots.SlotPacket]:
    for name, value in item.items():
        sequence = packet_slots.sequence_of(name)
        if sequence is not None:
            yield packet_slots.decode(sequence, bytes(value["B"]))


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
    def __init__(
        self,
        client: DynamoDBClient,
        calls_table: str,
        packets_table: str,
        slots_table: str,
        *,
        packet_ttl_s: int,
    ) -> None:
        self._ddb = client
        self._calls = calls_table
        self._packets = packets_table
        self._slots = slots_table
        # Packets carry their expiry (the tables' TTL attribute) from their first write.
        self._packet_ttl_s = packet_ttl_s

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
        write_id = uuid.uuid4().hex
        put_packet = {
            "Put": {
                "TableName": self._packets,
                "Item": {
                    "call_id": _s(call_id),
                    "sequence": _n(packet.sequence),
                    "data": _s(packet.data),
                    "timestamp": _seconds(packet.timestamp),
                    "received_at": _n(received_at_ns),
                    EXPIRES_AT: _n(received_at_ns // 1_000_000_000 + self._packet_ttl_s),
                    # Names this one call of add_packet, so that it can tell its own
                    # committed write (answer lost) from another request's packet.
                    "write_id": _s(write_id),
                }
                | ({"audio_format": _s(packet.audio_format)} if packet.audio_format else {}),
                "ConditionExpression": "attribute_not_exists(#seq)",
                "ExpressionAttributeNames": {"#seq": "sequence"},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        # A call whose packets live in slots (its first packet came in a batch) refuses
        # this write: the packet then goes to its slot, below.
        in_progress = "(#state = :in_progress AND attribute_not_exists(#layout))"
        key = {"call_id": _s(call_id)}
        names = {"#state": "state", "#layout": _LAYOUT}
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
            if _is_slotted(call_reason.get("Item")):
                return self._add_one_to_slots(call_id, packet, now=now, received_at_ns=received_at_ns)
            if call_reason.get("Code") != _CCF or "Item" in call_reason:
                return self._refusal(call_id, packet.sequence, write_id, reasons)
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
        if reasons is None:
            return PacketWrite(stored=True)
        if _is_slotted(reasons[1].get("Item")):
            return self._add_one_to_slots(call_id, packet, now=now, received_at_ns=received_at_ns)
        return self._refusal(call_id, packet.sequence, write_id, reasons)

    def _add_one_to_slots(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        if len(packet.data.encode()) > MAX_BATCHED_PACKET_BYTES:
            raise CallTooLargeError(
                f"call {call_id!r} streams in batches, whose packets hold at most {MAX_BATCHED_PACKET_BYTES} "
                "bytes of data"
            )
        return self.add_packets(call_id, [packet], now=now, received_at_ns=received_at_ns)[0]

    def add_packets(self, call_id: str, packets: list[Packet], *, now: str, received_at_ns: int) -> list[PacketWrite]:
        """Store a batch: each packet if its sequence is new and its call IN_PROGRESS, one result a packet.

        One TransactWriteItems per try: an update of each slot the batch touches, adding
        its packets on the condition that none of their sequences is there yet, and an
        update of the call that creates it (noting the slot layout) or checks that it is
        IN_PROGRESS in that layout. A cancellation returns the old slots and call: the
        packets found there are settled (duplicates, or ours when a lost answer made us
        try again), a closed call settles the rest, and the others are tried again. Every
        try settles at least one packet, so a batch takes at most as many tries as it
        has packets, and one when nothing is in the way (the usual case).
        """
        if len({p.sequence for p in packets}) != len(packets):
            raise ValueError("a batch's sequences must be distinct")
        write_id = uuid.uuid4().bytes[:8]
        # Packets of one request arrive in its order: what GET's out-of-order count reads.
        values = {
            p.sequence: packet_slots.encode(p, received_at_ns=received_at_ns + i, write_id=write_id)
            for i, p in enumerate(packets)
        }
        by_sequence = {p.sequence: p for p in packets}
        results: dict[int, PacketWrite] = {}
        pending = [p.sequence for p in packets]
        while pending:
            slots: dict[int, list[int]] = {}
            for sequence in pending:
                slots.setdefault(packet_slots.slot_of(sequence), []).append(sequence)
            expires_at = received_at_ns // 1_000_000_000 + self._packet_ttl_s
            writes = [
                self._slot_update(call_id, slot, [(s, values[s]) for s in seqs], expires_at)
                for slot, seqs in slots.items()
            ]
            reasons = self._transact([*writes, self._open_slotted_call(call_id, now)])
            if reasons is None:
                results |= {sequence: PacketWrite(stored=True) for sequence in pending}
                break
            call_item = None
            if reasons[-1].get("Code") == _CCF:
                # Servers that do not return the old item: read it, off the happy path.
                call_item = reasons[-1].get("Item") or self._get_call_item(call_id)
            state = CallState(call_item["state"]["S"]) if call_item else None
            if call_item is not None and not _is_slotted(call_item):
                # Its first packet came to the single route: the call's packets are items.
                offsets = {p.sequence: i for i, p in enumerate(packets)}
                for sequence in pending:
                    results[sequence] = self.add_packet(
                        call_id, by_sequence[sequence], now=now, received_at_ns=received_at_ns + offsets[sequence]
                    )
                break
            closed = state if state is not None and state is not CallState.IN_PROGRESS else None
            results |= self._found_in_slots(call_id, slots, reasons, write_id, closed)
            left = [sequence for sequence in pending if sequence not in results]
            if closed is not None:
                results |= {sequence: PacketWrite(stored=False, call_state=closed) for sequence in left}
                break
            if len(left) == len(pending):
                raise RuntimeError(f"a batch of {call_id!r} was refused without a reason: {reasons}")
            pending = left
        return [results[p.sequence] for p in packets]

    def _found_in_slots(
        self,
        call_id: str,
        slots: dict[int, list[int]],
        reasons: list[dict[str, Any]],
        write_id: bytes,
        closed: CallState | None,
    ) -> dict[int, PacketWrite]:
        """The batch's sequences that the refused slots already hold, each settled."""
        found: dict[int, PacketWrite] = {}
        for (slot, sequences), reason in zip(slots.items(), reasons, strict=False):
            if reason.get("Code") != _CCF:
                continue
            old = reason.get("Item") or self._get_item(self._slots, {"call_id": _s(call_id), "slot": _n(slot)}) or {}
            for sequence in sequences:
                value = old.get(packet_slots.attribute_name(sequence))
                if value is None:
                    continue
                stored = packet_slots.decode(sequence, bytes(value["B"]))
                if stored.write_id == write_id:  # an earlier try of ours, its answer lost
                    found[sequence] = PacketWrite(stored=True)
                else:
                    found[sequence] = PacketWrite(stored=False, existing=stored.packet, call_state=closed)
        return found

    def _slot_update(
        self, call_id: str, slot: int, packets: list[tuple[int, bytes]], expires_at: int
    ) -> dict[str, Any]:
        names = {f"#p{i}": packet_slots.attribute_name(sequence) for i, (sequence, _) in enumerate(packets)}
        sets = ", ".join(f"#p{i} = :p{i}" for i in range(len(packets)))
        return {
            "Update": {
                "TableName": self._slots,
                "Key": {"call_id": _s(call_id), "slot": _n(slot)},
                # A slot expires with its last packet.
                "UpdateExpression": f"SET {sets}, {EXPIRES_AT} = :expires_at",
                "ConditionExpression": " AND ".join(f"attribute_not_exists(#p{i})" for i in range(len(packets))),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {f":p{i}": {"B": value} for i, (_, value) in enumerate(packets)}
                | {":expires_at": _n(expires_at)},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _open_slotted_call(self, call_id: str, now: str) -> dict[str, Any]:
        """Create the call in the slot layout, or check that it is IN_PROGRESS in it (a write that changes nothing)."""
        return {
            "Update": {
                "TableName": self._calls,
                "Key": {"call_id": _s(call_id)},
                "UpdateExpression": (
                    "SET #state = if_not_exists(#state, :in_progress), "
                    "created_at = if_not_exists(created_at, :now), "
                    "updated_at = if_not_exists(updated_at, :now), "
                    "#layout = if_not_exists(#layout, :slots)"
                ),
                "ConditionExpression": (
                    "attribute_not_exists(call_id) OR (#state = :in_progress AND #layout = :slots)"
                ),
                "ExpressionAttributeNames": {"#state": "state", "#layout": _LAYOUT},
                "ExpressionAttributeValues": {
                    ":in_progress": _s(CallState.IN_PROGRESS.value),
                    ":now": _s(now),
                    ":slots": _s(_SLOTS),
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _transact(self, items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Run a transaction; None when it committed, else the cancellation reasons of failed conditions.

        Each try carries its own ClientRequestToken: botocore resends the same token when
        an answer is lost, and DynamoDB answers a committed token with success instead
        of running the transaction again (which would find its own packet, a "duplicate").
        https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html#DDB-TransactWriteItems-request-ClientRequestToken
        """
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with dependency("DynamoDB"):
                    self._ddb.transact_write_items(TransactItems=items, ClientRequestToken=uuid.uuid4().hex)
                return None
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons: list[dict[str, Any]] = exc.response.get("CancellationReasons", [])
                codes = {r.get("Code") for r in reasons} - {"None", None}
                if codes and codes <= {_CCF}:
                    return reasons
                if codes <= RETRYABLE_CODES | {_CCF}:
                    # A conflict or a throttle on one item says nothing of its condition: a
                    # ConditionalCheckFailed beside it is not the whole answer. Try again.
                    _conflict_pause(attempt)
                    continue
                if "ValidationError" in codes:
                    raise CallTooLargeError("the packet is too large to store with its call") from exc
                if "ItemCollectionSizeLimitExceeded" in codes:
                    # The arrival index (an LSI) caps one call's packets at 10 GB.
                    raise CallTooLargeError(
                        "the call has reached DynamoDB's 10 GB limit of one call's packets"
                    ) from exc
                raise
        raise DependencyUnavailableError("DynamoDB", "TransactionConflict")

    def _write(self, request: Callable[[], _T]) -> _T:
        """One single-item write, tried again on a transaction conflict; item-size refusals are CallTooLargeError."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with dependency("DynamoDB"):
                    return request()
            except DependencyUnavailableError as exc:
                if exc.reason not in _CONFLICT_CODES or attempt + 1 == _CONFLICT_RETRIES:
                    raise
            except ClientError as exc:
                if _is_item_too_large(exc):
                    raise CallTooLargeError(
                        f"the call's record would exceed DynamoDB's 400 KB item limit: {exc}"
                    ) from exc
                raise
            _conflict_pause(attempt)
        raise AssertionError("unreachable")

    def _refusal(self, call_id: str, sequence: int, write_id: str, reasons: list[dict[str, Any]]) -> PacketWrite:
        packet_reason, call_reason = reasons[0], reasons[1]
        existing = None
        if packet_reason.get("Code") == _CCF:
            # Servers that do not return the old item: read it, off the happy path.
            key = {"call_id": _s(call_id), "sequence": _n(sequence)}
            item = packet_reason.get("Item") or self._get_item(self._packets, key)
            if item and _str(item, "write_id") == write_id:
                # The packet this very call wrote: an earlier try committed and its answer
                # was lost, and a conflict on the resend made us try again with a new token.
                return PacketWrite(stored=True)
            existing = packet_from_item(item) if item else None
        state = None
        if call_reason.get("Code") == _CCF:
            state = CallState(call_reason["Item"]["state"]["S"])
        return PacketWrite(stored=False, existing=existing, call_state=state)

    def count_duplicate(self, call_id: str, *, token: str, count: int = 1) -> None:
        try:
            self._write(
                lambda: self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression="ADD duplicates :count SET duplicate_token = :token",
                    # The token makes a resent write (lost answer) count the duplicate once.
                    ConditionExpression=(
                        "attribute_exists(call_id) "
                        "AND (attribute_not_exists(duplicate_token) OR duplicate_token <> :token)"
                    ),
                    ExpressionAttributeValues={":count": _n(count), ":token": _s(token)},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            if not old:
                raise CallNotFoundError(call_id) from exc
            # Otherwise our own write committed; its answer was lost.

    def note_packet_stats(self, call_id: str, stats: PacketStats) -> None:
        self._set_on_call(call_id, {PACKET_STATS: _packet_stats_value(stats)})

    def set_recording(self, call_id: str, recording: Recording, *, packet_stats: PacketStats | None = None) -> None:
        self._set_on_call(call_id, _noted_values(recording, packet_stats))

    def _set_on_call(self, call_id: str, values: dict[str, AttributeValue]) -> None:
        """Set attributes of an existing call: a plain overwrite, so the same values again (a
        resent write whose answer was lost) change nothing."""
        try:
            self._write(
                lambda: self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values))),
                    ConditionExpression="attribute_exists(call_id)",
                    ExpressionAttributeNames={f"#a{i}": name for i, name in enumerate(values)},
                    ExpressionAttributeValues={f":v{i}": value for i, value in enumerate(values.values())},
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            raise CallNotFoundError(call_id) from exc

    def mark_enqueued(self, call_id: str, round: int, *, now: str) -> None:
        try:
            self._write(
                lambda: self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression="SET enqueued_round = :round, enqueued_at = :now",
                    ConditionExpression="#round = :round",
                    ExpressionAttributeNames={"#round": "round"},
                    ExpressionAttributeValues={":round": _n(round), ":now": _s(now)},
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            # A newer round began meanwhile; its own end or retry marks it.

    def claim_send(self, call_id: str, round: int, *, now: str, unclaimed_since: str) -> bool:
        return self._claim(
            call_id,
            round,
            "SET send_claimed_at = :now",
            "(attribute_not_exists(send_claimed_at) OR send_claimed_at < :since)",
            {":now": _s(now), ":since": _s(unclaimed_since)},
        )

    def claim_stale_resend(self, call_id: str, round: int) -> bool:
        return self._claim(call_id, round, "SET stale_resend_round = :round", "NOT stale_resend_round = :round", {})

    def _claim(self, call_id: str, round: int, update: str, condition: str, values: Item) -> bool:
        """One conditional write that a single sweeper wins, while the call is PROCESSING_AI in ``round``.

        A resend of the write whose answer was lost is refused: the round then goes
        unsent by this sweep and is claimed again by a later one, never sent twice.
        """
        try:
            self._write(
                lambda: self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression=update,
                    ConditionExpression=f"#state = :processing AND #round = :round AND {condition}",
                    ExpressionAttributeNames={"#state": "state", "#round": "round"},
                    ExpressionAttributeValues={
                        ":processing": _s(CallState.PROCESSING_AI.value),
                        ":round": _n(round),
                        **values,
                    },
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def transition(
        self,
        call_id: str,
        rule: TransitionRule,
        *,
        now: str,
        token: str,
        expected_round: int | None = None,
        last_sequence: int | None = None,
        failure_reason: str | None = None,
        result: AIResult | None = None,
        recording: Recording | None = None,
        packet_stats: PacketStats | None = None,
    ) -> Call:
        """``rule`` as one conditional write; the write also records ``token``, so that when
        botocore resends a write whose answer was lost, its refusal is recognised as our
        own success rather than a lost race."""
        sets = ["#state = :target", "updated_at = :now", "transition_token = :token"]
        removes = []
        names = {"#state": "state"}
        values: dict[str, AttributeValue] = {
            ":target": _s(rule.target.value),
            ":source": _s(rule.source.value),
            ":now": _s(now),
            ":token": _s(token),
        }
        condition = "#state = :source"
        if expected_round is not None:
            condition += " AND #round = :expected_round"
            values[":expected_round"] = _n(expected_round)
            names["#round"] = "round"
        if rule.starts_round:
            sets.append("#round = if_not_exists(#round, :zero) + :one")
            values |= {":zero": _n(0), ":one": _n(1)}
            names["#round"] = "round"
        if last_sequence is not None:
            sets.append("last_sequence = :last")
            values[":last"] = _n(last_sequence)
        if failure_reason is not None:
            sets.append("failure_reason = :reason")
            values[":reason"] = _s(failure_reason)
        elif rule.clears_failure_reason:
            removes.append("failure_reason")
        if result is not None:
            sets += ["transcript = :transcript", "transcript_truncated = :truncated", "sentiment = :sentiment"]
            values[":transcript"] = _s(result.transcript)
            values[":truncated"] = {"BOOL": result.transcript_truncated}
            values[":sentiment"] = {
                "M": {"label": _s(result.sentiment.label), "score": _n(float(result.sentiment.score))}
            }
        _set_noted(sets, names, values, recording, packet_stats)
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            response = self._write(
                lambda: self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            if not old:
                raise CallNotFoundError(call_id) from exc
            if _str(old, "transition_token") == token:
                return call_from_item(old)  # our write committed; its answer was lost
            raise InvalidTransitionError(
                call_id, CallState(old["state"]["S"]), rule.target, call_from_item(old)
            ) from exc
        return call_from_item(response["Attributes"])

    def start_attempt(self, call_id: str, round: int, *, now: str, token: str) -> Attempt | None:
        try:
            response = self._write(
                lambda: self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression=(
                        "SET ai_attempts = if_not_exists(ai_attempts, :zero) + :one, "
                        "attempts = list_append(if_not_exists(attempts, :empty), :attempt), "
                        "attempt_token = :token, attempt_token_number = if_not_exists(ai_attempts, :zero) + :one"
                    ),
                    # The token makes a resent write (lost answer) count the attempt once.
                    ConditionExpression=(
                        "#state = :processing AND #round = :round "
                        "AND (attribute_not_exists(attempt_token) OR attempt_token <> :token)"
                    ),
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
                        ":token": _s(token),
                    },
                    # The whole item, for the recording an earlier attempt noted (an update's
                    # returned values cost no read units).
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item") or {}
            if _str(old, "attempt_token") == token:
                # Our write committed; its answer was lost.
                return Attempt(number=_int(old, "attempt_token_number"), call=call_from_item(old))
            return None
        item = response["Attributes"]
        return Attempt(number=int(item["ai_attempts"]["N"]), call=call_from_item(item))

    def record_attempt_error(
        self,
        call_id: str,
        round: int,
        attempt: int,
        error: str,
        *,
        recording: Recording | None = None,
        packet_stats: PacketStats | None = None,
    ) -> None:
        sets = [f"attempts[{attempt - 1}].#error = :error", "ai_last_error = :error"]
        names = {"#error": "error", "#round": "round"}
        values: dict[str, AttributeValue] = {":error": _s(error), ":round": _n(round)}
        _set_noted(sets, names, values, recording, packet_stats)
        try:
            self._write(
                lambda: self._ddb.update_item(
                    TableName=self._calls,
                    Key={"call_id": _s(call_id)},
                    UpdateExpression="SET " + ", ".join(sets),
                    # Only while the attempt's round is the call's round: a stale round's late
                    # error must not overwrite the current round's.
                    ConditionExpression="#round = :round",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def get_call(self, call_id: str) -> Call | None:
        item = self._get_call_item(call_id)
        return call_from_item(item) if item else None

    def _get_call_item(self, call_id: str) -> Item | None:
        return self._get_item(self._calls, {"call_id": _s(call_id)})

    def _get_item(self, table: str, key: Item) -> Item | None:
        """One item, read consistently: off the happy path, where a refusal did not return it."""
        with dependency("DynamoDB"):
            response = self._ddb.get_item(TableName=table, Key=key, ConsistentRead=True)
        item: Item | None = response.get("Item")
        return item

    def arrivals(self, call_id: str) -> list[Arrival]:
        """From the keys-only arrival index (GET's cost does not grow with the audio), or, for a call
        streamed in batches, from its slot items (read whole: a slot is read for its arrival times)."""
        arrivals = [
            Arrival(sequence=int(item["sequence"]["N"]), received_at_ns=_int(item, "received_at"))
            for page in self._query(self._packets, call_id, index=ARRIVAL_INDEX, projection="#seq, received_at")
            for item in page
        ]
        if not arrivals:  # a call's packets are all in one layout
            arrivals = [
                Arrival(sequence=stored.packet.sequence, received_at_ns=stored.received_at_ns)
                for page in self._query(self._slots, call_id)
                for item in page
                for stored in _slot_packets(item)
            ]
        return sorted(arrivals, key=lambda a: (a.received_at_ns, a.sequence))

    def packets(self, call_id: str, *, max_bytes: int | None = None) -> list[Packet]:
        """Every stored packet of the call, in sequence order; CallTooLargeError past ``max_bytes`` of data."""
        packets: list[Packet] = []
        total = 0
        for page_packets in self._packet_pages(call_id):
            for packet in page_packets:
                total += len(packet.data)
                if max_bytes is not None and total > max_bytes:
                    raise CallTooLargeError(
                        f"call {call_id!r} has more than {max_bytes} bytes of packet data (at packet {packet.sequence})"
                    )
                packets.append(packet)
        return sorted(packets, key=lambda p: p.sequence)

    def _packet_pages(self, call_id: str) -> Iterator[list[Packet]]:
        """The call's packets a page at a time: its items, or else its slots (a call has one layout)."""
        found = False
        for page in self._query(self._packets, call_id):
            found = found or bool(page)
            yield [packet_from_item(item) for item in page]
        if not found:
            for page in self._query(self._slots, call_id):
                yield [stored.packet for item in page for stored in _slot_packets(item)]

    def _query(
        self, table: str, call_id: str, *, index: str | None = None, projection: str | None = None
    ) -> Iterator[list[Item]]:
        """The call's items of ``table``, a page at a time, so that a reader can stop early."""
        kwargs: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "call_id = :id",
            "ExpressionAttributeValues": {":id": _s(call_id)},
            "ConsistentRead": True,
        }
        if index:
            kwargs["IndexName"] = index
        if projection:
            kwargs |= {"ProjectionExpression": projection, "ExpressionAttributeNames": {"#seq": "sequence"}}
        while True:
            with dependency("DynamoDB"):
                response = self._ddb.query(**kwargs)
            yield response.get("Items", [])
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def list_calls(
        self, state: CallState, *, limit: int, cursor: str | None, updated_before: str | None = None
    ) -> CallPage:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        values = {":state": _s(state.value)}
        key_condition = "#state = :state"
        if updated_before is not None:
            key_condition += " AND updated_at < :before"
            values[":before"] = _s(updated_before)
        kwargs: dict[str, Any] = {
            "TableName": self._calls,
            "IndexName": STATE_INDEX,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": values,
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

    def count_calls(self, state: CallState, *, up_to: int) -> int:
        if up_to < 1:
            raise ValueError("up_to must be >= 1")
        # Select=COUNT returns no items, only their number, from the state index: no item
        # crosses the network. Limit bounds the items read (and so the read units billed), so a
        # count stops at up_to; DynamoDB still pages at 1 MB, hence the loop.
        kwargs: dict[str, Any] = {
            "TableName": self._calls,
            "IndexName": STATE_INDEX,
            "KeyConditionExpression": "#state = :state",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {":state": _s(state.value)},
            "Select": "COUNT",
        }
        counted = 0
        while counted < up_to:
            with dependency("DynamoDB"):
                response = self._ddb.query(**kwargs, Limit=up_to - counted)
            counted += response["Count"]
            if "LastEvaluatedKey" not in response:
                break
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return min(counted, up_to)

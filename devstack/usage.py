"""What the local stack's AWS requests would bill: a WSGI meter in front of moto.

Every request that reaches moto (not one the fault injector answered in its place) is
counted by service and operation, and DynamoDB's capacity units are worked out the way
DynamoDB bills them (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/
read-write-operations.html and .../CapacityUnitCalculations.html):

- a write request unit covers 1 KB of item; a write bills the larger of the item before
  and after it (a refused conditional write bills too, on the item as it is);
- a read request unit covers 4 KB read strongly consistently (eventually: half);
  a query bills the summed size of the items it read, rounded up to 4 KB;
- every item of a transaction bills double, condition checks included.

Item sizes follow DynamoDB's rules (.../CapacityUnitCalculations.html#ItemSizeCalculations):
attribute names and string values by their UTF-8 length, numbers at about one byte per
two significant digits plus one, lists and maps 3 bytes plus 1 per element.

DynamoDB also bills the bytes its tables hold (.../CapacityUnitCalculations.html,
"storage"): each item's size plus 100 bytes, and again for each secondary index that
holds a copy of it (its keys and projected attributes, plus 100 bytes). The meter
reports what each table gained since the last reset (every write's item after it, less
before), split into items that carry their table's TTL attribute (they leave by
themselves) and items that stay.

SQS bills a request per 64 KB chunk of payload; S3 bills PUT-class and GET-class
requests apart, and storage by the bytes stored. ``GET /_local_usage`` answers the
counters (``?reset=1`` also zeroes them), next to the fault injector's ``/_local_faults``.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from devstack.faults import _credential, _dynamodb_backend, _read_body, identify
from devstack.function_logs import LogMeter, in_function

USAGE_PATH = "/_local_usage"
WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
STORAGE_OVERHEAD_BYTES = 100
SQS_CHUNK_BYTES = 64 * 1024
# S3's request classes (Amazon S3 pricing): PUT, COPY, POST, LIST at one price; GET,
# SELECT and every other request (HEAD included) at another.
_S3_PUT_CLASS = ("Put", "Copy", "Post", "List", "CreateMultipart", "UploadPart", "CompleteMultipart")

_StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]
Item = Mapping[str, Any]


def value_size(value: Mapping[str, Any]) -> int:
    """Bytes of one DynamoDB-JSON value (``{"S": ...}``, ``{"N": ...}``...)."""
    kind, raw = next(iter(value.items()))
    if kind == "S":
        return len(str(raw).encode("utf-8"))
    if kind == "N":
        digits = Decimal(str(raw)).normalize().as_tuple().digits
        return math.ceil(len(digits) / 2) + 1
    if kind == "B":
        return len(base64.b64decode(raw)) if isinstance(raw, str) else len(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode("utf-8")) + value_size(v) + 1 for k, v in raw.items())
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in raw)
    if kind in ("SS", "NS", "BS"):
        return sum(value_size({kind[0]: v}) for v in raw)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: Item | None) -> int:
    """Bytes DynamoDB bills for an item: each attribute's name and value."""
    if not item:
        return 0
    return sum(len(name.encode("utf-8")) + value_size(value) for name, value in item.items())


def item_storage(table: Any, attributes: Item, size: int) -> tuple[int, str]:
    """Bytes an item of ``size`` bytes (``attributes``: its DynamoDB JSON) takes as DynamoDB
    bills its storage, and whether it is ``expiring`` (it carries the table's TTL attribute)
    or ``kept``."""
    size += STORAGE_OVERHEAD_BYTES
    for index in (*table.indexes, *table.global_indexes):
        # An index holds only the items that have its key attributes (a sparse index).
        if all(name in attributes for name in index.schema_key_attrs):
            size += item_size(projected(index, attributes)) + STORAGE_OVERHEAD_BYTES
    ttl = table.ttl.get("AttributeName") if table.ttl.get("TimeToLiveStatus") == "ENABLED" else None
    return size, "expiring" if ttl and ttl in attributes else "kept"


def projected(index: Any, attributes: Item) -> Item:
    """The attributes a moto index keeps of an item, as its ``project`` selects them (keys only,
    keys and the included names, or all), read off the item's JSON: moto's own ``project``
    converts the whole item twice, and costs more than the write it is metered for."""
    projection = index.projection or {}
    kind = projection.get("ProjectionType")
    if kind not in ("KEYS_ONLY", "INCLUDE"):
        return attributes
    names = [*index.table_key_attrs, *index.schema_key_attrs]
    if kind == "INCLUDE":
        names += projection.get("NonKeyAttributes", [])
    return {name: attributes[name] for name in names if name in attributes}


@dataclass(frozen=True)
class Held:
    """One item a write names, as it is (before or after the write)."""

    table: str
    size: int  # its size, for write units (0: absent)
    stored: int  # its storage, index copies included (0: absent)
    kind: str  # "expiring" or "kept"


ABSENT = Held(table="", size=0, stored=0, kind="kept")


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, *, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


class UsageMeter:
    """WSGI middleware: counts what each request to moto would bill. Put it inside the
    lock that serialises moto, so the items read before and after a write are its own."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.requests: dict[str, int] = {}
        self.dynamodb = {"write_units": 0.0, "read_units": 0.0}
        self.sqs_billed_requests = 0
        self.s3 = {"put_class": 0, "get_class": 0, "bytes_put": 0}
        # What each table gained since the reset: every write's item after, less before.
        self.dynamodb_stored: dict[str, dict[str, int]] = {}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(sorted(self.requests.items())),
                "dynamodb": dict(self.dynamodb),
                "dynamodb_stored_bytes": {table: dict(held) for table, held in self.dynamodb_stored.items()},
                "sqs_billed_requests": self.sqs_billed_requests,
                "s3": dict(self.s3),
            }

    def __call__(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == USAGE_PATH:
            return self._answer(environ, start_response)
        found = identify(environ)
        if found is None:
            return self._app(environ, start_response)
        service, operation = found
        if service == "dynamodb":
            return self._dynamodb(environ, start_response, operation)
        body = self._app(environ, start_response)
        with self._lock:
            key = f"{service}.{operation}"
            self.requests[key] = self.requests.get(key, 0) + 1
            if service == "sqs":
                payload = int(environ.get("CONTENT_LENGTH") or 0)
                self.sqs_billed_requests += max(1, math.ceil(payload / SQS_CHUNK_BYTES))
            elif service == "s3":
                put_class = operation.startswith(_S3_PUT_CLASS)
                self.s3["put_class" if put_class else "get_class"] += 1
                if operation == "PutObject":
                    self.s3["bytes_put"] += int(environ.get("CONTENT_LENGTH") or 0)
        return body

    def _answer(self, environ: dict[str, Any], start_response: _StartResponse) -> list[bytes]:
        stats = self.stats()
        if parse_qs(environ.get("QUERY_STRING", "")).get("reset") == ["1"]:
            with self._lock:
                self._reset()
        data = json.dumps(stats).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def _dynamodb(self, environ: dict[str, Any], start_response: _StartResponse, operation: str) -> list[bytes]:
        request = json.loads(_read_body(environ) or b"{}")
        backend = self._backend(environ)
        before = self._items(backend, operation, request)
        body = list(self._app(environ, start_response))
        after = self._items(backend, operation, request)
        try:
            answer = json.loads(b"".join(body) or b"{}")
        except ValueError:
            answer = {}
        writes, reads = _units(operation, request, answer, [h.size for h in before], [h.size for h in after])
        with self._lock:
            key = f"dynamodb.{operation}"
            self.requests[key] = self.requests.get(key, 0) + 1
            self.dynamodb["write_units"] += writes
            self.dynamodb["read_units"] += reads
            for held, sign in [*((h, -1) for h in before), *((h, 1) for h in after)]:
                if held.stored:
                    counted = self.dynamodb_stored.setdefault(held.table, {"expiring": 0, "kept": 0})
                    counted[held.kind] += sign * held.stored
        return body

    @staticmethod
    def _backend(environ: dict[str, Any]) -> Any:
        credential = _credential(environ)
        return _dynamodb_backend(environ, credential[1], credential[0]) if credential else None

    @staticmethod
    def _items(backend: Any, operation: str, request: Mapping[str, Any]) -> list[Held]:
        """Each item a write names as it is now (ABSENT when it does not exist, or its table is
        unknown: moto then answers the request's error itself), in the request's order."""
        if backend is None:
            return []
        ops: list[Mapping[str, Any]] = []
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            ops.append(request)
        elif operation == "TransactWriteItems":
            ops.extend(next(iter(entry.values())) for entry in request.get("TransactItems", []))
        found = []
        for op in ops:
            try:
                table = backend.get_table(op["TableName"])
                item = backend.get_item(op["TableName"], _key_of(backend, op))
            except Exception:  # noqa: BLE001 - the meter never changes moto's answer
                item = None
            if item is None:
                found.append(ABSENT)
                continue
            # Sized now: an update changes moto's item in place.
            attributes = item.to_json()["Attributes"]
            size = item_size(attributes)
            stored, kind = item_storage(table, attributes, size)
            found.append(Held(op["TableName"], size, stored, kind))
        return found


def _key_of(backend: Any, op: Mapping[str, Any]) -> Item:
    if "Key" in op:
        return dict(op["Key"])
    table = backend.get_table(op["TableName"])
    names = [n for n in (table.hash_key_attr, table.range_key_attr) if n]
    return {n: op["Item"][n] for n in names if n in op["Item"]}


def _units(
    operation: str, request: Mapping[str, Any], answer: Mapping[str, Any], before: list[int], after: list[int]
) -> tuple[float, float]:
    """(write units, read units) of one DynamoDB request."""
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        size = max(before[0], after[0], item_size(request.get("Item"))) if before else item_size(request.get("Item"))
        return float(write_units(size)), 0.0
    if operation == "TransactWriteItems":
        return float(sum(2 * write_units(max(b, a)) for b, a in zip(before, after, strict=True))), 0.0
    if operation == "GetItem":
        size = item_size(answer.get("Item"))
        return 0.0, read_units(size, consistent=bool(request.get("ConsistentRead")))
    if operation in ("Query", "Scan"):
        size = sum(item_size(i) for i in answer.get("Items", []))
        return 0.0, read_units(size, consistent=bool(request.get("ConsistentRead")))
    return 0.0, 0.0


class FunctionClock:
    """Lambda's billed units for the local stack's functions: invocations and handler seconds,
    and with ``logs`` what each wrote to its log (devstack.function_logs).

    The API's requests are the ingest function's invocations (one per request, as API
    Gateway invokes it), timed by ``asgi``; the pollers time their own invocations.
    ``GET /_local_usage`` on the API answers them (``?reset=1`` also zeroes them).
    """

    def __init__(self, ingest_function: str, pollers: Iterable[Any] = (), logs: LogMeter | None = None) -> None:
        self._ingest = ingest_function
        self._pollers = list(pollers)
        self._logs = logs
        self._lock = threading.Lock()
        self._invocations = 0
        self._seconds = 0.0

    def stats(self, *, reset: bool = False) -> dict[str, Any]:
        with self._lock:
            functions = {self._ingest: {"invocations": self._invocations, "seconds": self._seconds}}
            if reset:
                self._invocations, self._seconds = 0, 0.0
        for poller in self._pollers:
            functions[poller.source.function] = poller.usage(reset=reset)
        if self._logs is not None:
            logged = self._logs.stats(reset=reset)
            for name, usage in functions.items():
                usage.update(logged.get(name, {"log_bytes": 0, "log_events": 0}))
        return {"functions": functions}

    def asgi(self, app: Any) -> Any:
        """``app`` with its HTTP requests timed, and ``GET /_local_usage`` answered."""

        async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if scope["path"] == USAGE_PATH:
                reset = parse_qs(scope.get("query_string", b"").decode()).get("reset") == ["1"]
                data = json.dumps(self.stats(reset=reset)).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return
            started = time.perf_counter()
            try:
                with in_function(self._ingest):
                    await app(scope, receive, send)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self._invocations += 1
                    self._seconds += elapsed

        return timed

"""Run moto's own server (DynamoDB, SQS, ...) with fixes that make it behave like AWS under load.

1. Requests are served one at a time. moto's threaded server runs every request in its
   own thread with no lock around the backends, so a conditional write can interleave
   with another thread between its check and its write, and a cancelled transaction
   restores a snapshot of whole tables, wiping out items other threads wrote meanwhile.
   DynamoDB guarantees atomic conditional writes and isolated transactions; serialising
   the backend calls gives the same guarantees here. moto is pure Python under one GIL,
   so nothing is lost in throughput. SQS long polls wait outside the lock (see
   SerializedApp), so a waiting poller holds up nobody.
2. ``TransactWriteItems`` checks each condition once and backs up only the items it
   writes, instead of deep-copying every table it touches; and ``Query`` on a table's
   partition key reads that partition instead of sorting the whole table. Both cost
   moto time proportional to the table, so the stack slowed down with every packet stored.
3. An ``UpdateExpression`` is parsed once per distinct text (moto parses it twice per
   ``UpdateItem``), and answers that carry items are written as plain JSON instead of
   through the service model, attribute by attribute: the AI worker's reads and writes,
   and every GET, were paying for both.

Run as ``python -m devstack.moto_server --port N``; it prints ``ready`` on stdout once it
accepts connections.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SerializedApp:
    """Serve one request at a time through the wrapped WSGI app.

    An SQS long poll (ReceiveMessage with WaitTimeSeconds > 0) would hold the lock for
    its whole wait. Instead it waits outside the lock, looking into moto's queue every
    ``LONG_POLL_STEP_S`` (no request, so nearly free), and is served once the queue has
    a visible message or its wait is over: a client long-polls as it would against SQS,
    and other requests run meanwhile.
    """

    LONG_POLL_STEP_S = 0.02

    def __init__(self, app: _WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        wait_s, queue_url = self._long_poll(environ)
        region = _REGION.search(environ.get("HTTP_AUTHORIZATION", ""))
        deadline = time.monotonic() + wait_s
        while wait_s and time.monotonic() < deadline:
            with self._lock:
                if _has_visible_message(queue_url, region.group(1) if region else "us-east-1"):
                    return list(self._app(environ, start_response))
            time.sleep(self.LONG_POLL_STEP_S)
        with self._lock:
            return list(self._app(environ, start_response))

    @staticmethod
    def _long_poll(environ: dict[str, Any]) -> tuple[float, str]:
        """The wait and queue of an SQS JSON-protocol ReceiveMessage (0 for anything else)."""
        if environ.get("HTTP_X_AMZ_TARGET") != "AmazonSQS.ReceiveMessage":
            return 0.0, ""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            request = json.loads(body)
            wait, url = float(request.get("WaitTimeSeconds", 0)), str(request["QueueUrl"])
        except (ValueError, KeyError, AttributeError, TypeError):
            return 0.0, ""
        # moto itself must not wait: it would hold the lock for the whole wait.
        request["WaitTimeSeconds"] = 0
        body = json.dumps(request).encode()
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        return wait, url


_REGION = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/sqs/")


def _has_visible_message(queue_url: str, region: str) -> bool:
    """Whether moto's queue at ``queue_url`` (http://host/<account>/<name>) has a visible message."""
    from moto.sqs.models import sqs_backends

    parts = queue_url.rstrip("/").rsplit("/", 2)
    if len(parts) != 3:
        return True  # not a queue URL: let moto answer with its error
    account, name = parts[1], parts[2]
    queue = sqs_backends[account][region].queues.get(name)
    if queue is None:
        return True
    return any(m.visible for m in queue._messages)


def patch_transactions() -> None:  # noqa: PLR0915 - one function, as moto's own
    """TransactWriteItems that checks every condition once, then writes, backing up only its items.

    moto's own copies every table a transaction touches (time proportional to the table)
    and evaluates each condition twice. With requests serialised, a condition checked in
    the first pass still holds in the second.
    """
    from moto.dynamodb import models
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:  # noqa: PLR0912
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        plan: list[tuple[str, dict[str, Any], dict[str, Any], Any]] = []
        reasons: list[tuple[str | None, str | None, Any]] = []
        seen: set[tuple[str, str]] = set()
        for entry in transact_items:
            if len(entry) != 1:
                raise TransactWriteSingleOpException()
            op_type, op = next(iter(entry.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table = self.get_table(op["TableName"])
            if op_type == "Put":
                names = [n for n in (table.hash_key_attr, table.range_key_attr) if n]
                key = {n: op["Item"][n] for n in names if n in op["Item"]}
            else:
                key = op["Key"]
            identity = (op["TableName"], str(sorted(key.items())))
            if identity in seen:
                raise MultipleTransactionsException()
            seen.add(identity)
            current = self.get_item(op["TableName"], key)
            condition = op.get("ConditionExpression")
            holds = condition is None or get_filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            ).expr(current)
            if holds:
                reasons.append((None, None, None))
            else:
                old = (
                    current.to_json()["Attributes"]
                    if current and op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
                    else None
                )
                reasons.append(("ConditionalCheckFailed", "The conditional request failed", old))
            # Only an item this transaction writes needs a backup to restore.
            plan.append((op_type, op, key, None if op_type == "ConditionCheck" else copy.deepcopy(current)))
        if any(code is not None for code, _, _ in reasons):
            raise TransactionCanceledException(reasons)
        done = []
        try:
            for op_type, op, key, before in plan:
                name = op["TableName"]
                if op_type == "ConditionCheck":
                    continue
                if op_type == "Put":
                    self.put_item(name, op["Item"])
                elif op_type == "Delete":
                    self.delete_item(name, key)
                elif op_type == "Update":
                    self.update_item(
                        name,
                        key,
                        update_expression=op["UpdateExpression"],
                        expression_attribute_names=op.get("ExpressionAttributeNames"),
                        expression_attribute_values=op.get("ExpressionAttributeValues"),
                    )
                done.append((name, key, before))
        except Exception:
            for name, key, before in reversed(done):
                table = self.tables[name]
                hash_key, range_key = self.get_keys_value(table, key)
                table.delete_item(hash_key, range_key)
                if before is not None:
                    table.put_item(before.to_json()["Attributes"])
            raise

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def patch_partition_queries() -> None:
    """Make a Query on a table's own key read one partition, not the whole table.

    moto answers ``Query(call_id = :id)`` by sorting every item of the table and then
    filtering, so reading one call's packets got slower with every packet stored by any
    call. Serialised requests make a per-table hint safe.
    """
    from moto.dynamodb.models.table import Table

    original_query, original_all_items = Table.query, Table.all_items

    def all_items(self: Any) -> Any:
        hint = getattr(self, "_partition_hint", None)
        if hint is not None and self.range_key_attr:
            return list(self.items.get(hint, {}).values())
        return original_all_items(self)

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        on_index = kwargs.get("index_name") or (len(args) > 6 and args[6])
        if on_index or hash_key is None:
            return original_query(self, hash_key, *args, **kwargs)
        self._partition_hint = hash_key
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            self._partition_hint = None

    Table.all_items = all_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]


def patch_update_expression_parsing() -> None:
    """Parse each distinct UpdateExpression once, not twice per UpdateItem.

    moto parses an UpdateItem's expression in its request handler and again in its
    backend; the worker's UpdateItems spent a fifth of moto's time there. The tree is a
    pure function of the text, and moto only reads it: its validator works on a deep
    copy. The cache holds the few expressions the app uses (bounded in case of others).
    """
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]

    original = UpdateExpressionParser.make.__func__
    cache: dict[str, Any] = {}

    def make(cls: Any, expression_str: str) -> Any:
        tree = cache.get(expression_str)
        if tree is None:
            tree = original(cls, expression_str)
            if len(cache) < 1024:
                cache[expression_str] = tree
        return tree

    UpdateExpressionParser.make = classmethod(make)


# Answers that carry items. Serialising them through the service model walked every
# attribute of every item: two thirds of moto's time for a Query of five packets.
ITEM_OPERATIONS = frozenset({"GetItem", "Query", "Scan", "UpdateItem", "BatchGetItem"})


def patch_item_responses() -> None:
    """Write DynamoDB answers that carry items as plain JSON, which is what the shapes give.

    In DynamoDB's JSON protocol an answer is its result as JSON: attribute values are
    already ``{"S": ...}`` dicts of strings, numbers, booleans, lists and dicts. Only
    raw bytes (binary attributes, where moto keeps them as bytes) and timestamps need
    the shapes; ``json.dumps`` refuses those, and moto's serializer then writes the
    answer as before. (UpdateItem's answer holds binary attributes already base64-encoded:
    written as they are, where moto's serializer would encode them a second time.)
    """
    from moto.dynamodb.responses import DynamoResult

    original = DynamoResult.execute_result

    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name in ITEM_OPERATIONS:
            try:
                body = json.dumps(self.result)
            except (TypeError, ValueError):
                pass
            else:
                version = context.service_model.metadata.get("jsonVersion", "1.0")
                return 200, {"Content-Type": f"application/x-amz-json-{version}"}, body
        return original(self, context)

    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]


def serve(host: str, port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # a line per request drowns the stack's own log

    patch_transactions()
    patch_partition_queries()
    patch_update_expression_parsing()
    patch_item_responses()
    app = SerializedApp(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.host, args.port)
    sys.exit(0)


if __name__ == "__main__":
    main()

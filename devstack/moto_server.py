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
   ``UpdateItem``), its tree copied for validation by unpickling rather than deep-copying,
   and the checks that read only its text, names and the table's keys made once for each
   (moto walks the tree once per check on every write); the ``ConditionExpression`` of a
   transaction's items, a PutItem or a DeleteItem is parsed once per distinct text, names
   and the values it names (moto parses it on every write: a third of its time on a
   packet's transaction); answers that carry items
   are written as plain JSON instead of through the service model, attribute by
   attribute: the AI worker's reads and writes, and every GET, were paying for both.
4. ``TransactWriteItems`` honours its ``ClientRequestToken`` as DynamoDB does (moto ignores
   it): botocore retries a transaction whose answer was lost with the same token, and a
   token that committed answers success again instead of writing twice.

The patches replace moto internals as they are in moto ``MOTO_VERSION``: ``apply_patches``
refuses any other moto, and any replaced attribute that moved, rather than patch names
nobody calls any more.

Run as ``python -m devstack.moto_server --port N``; it prints ``ready`` on stdout once it
accepts connections.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import inspect
import io
import json
import pickle
import re
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
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


# The moto whose internals the patches below replace (requirements-dev.txt pins it). Any
# other moto may have moved or changed them: a patch would then replace a name nobody
# calls any more, or break moto in ways no test of this repository would notice.
MOTO_VERSION = "5.2.5"

# Table.query's parameters the partition patch reads positionally, as moto's backend passes them.
_TABLE_QUERY_PARAMETERS = ("self", "hash_key")


def _patch_targets() -> list[tuple[Any, str]]:
    """Every moto attribute that ``apply_patches`` replaces (class attributes, and module
    functions under each name they are imported as)."""
    from moto.dynamodb import comparisons, models
    from moto.dynamodb.models import DynamoDBBackend, table
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
    from moto.dynamodb.responses import DynamoHandler, DynamoResult

    return [
        (DynamoDBBackend, "transact_write_items"),
        (DynamoHandler, "transact_write_items"),
        (Table, "query"),
        (Table, "all_items"),
        (UpdateExpressionParser, "make"),
        (validators.UpdateExpressionValidator, "__init__"),
        (validators.UpdateExpressionValidator, "validate"),
        (validators, "deepcopy"),
        (DynamoResult, "execute_result"),
        (comparisons, "get_filter_expression"),
        (models, "get_filter_expression"),
        (table, "get_filter_expression"),
    ]


def check_moto() -> None:
    """Fail loudly unless the installed moto is the one the patches were written for."""
    import moto

    review = "review every patch in devstack/moto_server.py (and tests/unit/test_moto_patch_*.py) against it"
    installed = getattr(moto, "__version__", "unknown")
    if installed != MOTO_VERSION:
        raise RuntimeError(f"moto {installed} is installed, the patches are for moto {MOTO_VERSION}: {review}")
    try:
        targets = _patch_targets()
    except ImportError as e:
        raise RuntimeError(f"moto {installed} moved a module the patches use ({e}): {review}") from e
    for owner, name in targets:
        if not callable(getattr(owner, name, None)):
            where = owner.__name__ if inspect.ismodule(owner) else f"{owner.__module__}.{owner.__qualname__}"
            raise RuntimeError(f"{where}.{name} is gone: {review}")
    from moto.dynamodb.models.table import Table

    parameters = tuple(inspect.signature(Table.query).parameters)
    if parameters[: len(_TABLE_QUERY_PARAMETERS)] != _TABLE_QUERY_PARAMETERS or "index_name" not in parameters:
        raise RuntimeError(f"moto.dynamodb.models.table.Table.query{parameters} changed: {review}")


def apply_patches() -> None:
    """Check that the installed moto is the one the patches were written for, then apply them all."""
    check_moto()
    patch_condition_expression_parsing()  # first: the patched transactions import the parser
    patch_transactions()
    patch_partition_queries()
    patch_update_expressions()
    patch_item_responses()


_ABSENT = object()


@contextlib.contextmanager
def patches_applied() -> Iterator[None]:
    """``apply_patches()`` until exit, then moto as it was.

    The patches replace class attributes, shared by everything in the process: a test
    that applies them must not leave them to the tests after it.
    """
    saved = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name in _patch_targets()]
    apply_patches()
    try:
        yield
    finally:
        for owner, name, value in saved:
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def patch_transactions() -> None:
    """TransactWriteItems without moto's copies of whole tables, honouring ClientRequestToken."""
    _patch_transaction_writes()
    _patch_client_request_tokens()


_TRANSACT_OPERATIONS = frozenset({"ConditionCheck", "Put", "Delete", "Update"})

# (table, hash key, range key or None, the item before the transaction wrote it or None)
_Backup = tuple[Any, Any, Any, Any]


def _patch_transaction_writes() -> None:
    """moto's TransactWriteItems step for step, except that it backs up only the items it writes.

    moto deep-copies every table a transaction touches, to put it back if the transaction
    fails (time proportional to the table), and evaluates each condition twice: in its
    loop and again in the write. With requests serialised, a condition checked in the
    loop still holds for the write, and putting back the items written undoes a
    transaction as well as restoring whole tables. Everything a client sees is moto's:
    the same checks in the same order, the same exceptions and cancellation reasons.
    (A rolled-back write leaves its DynamoDB Streams records, which moto's table copy
    dropped; the stack has no streams.)
    """
    from moto.dynamodb import models
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        targets: set[tuple[str, str]] = set()
        reasons: list[tuple[str | None, str | None, Any]] = []
        written: list[_Backup] = []
        for entry in transact_items:
            if len(entry) > 1:
                # moto raises this without undoing the items before it; DynamoDB writes nothing.
                _put_back(written)
                raise TransactWriteSingleOpException()
            old_item = None
            try:
                op_type, op = next(iter(entry.items()))
                if op_type not in _TRANSACT_OPERATIONS:
                    raise ValueError("Unsupported transaction operation")
                name = op["TableName"]
                key = _key_of(self, op_type, op)
                target = (str(name), str(dict(sorted(key.items()))))
                if target in targets:
                    raise MultipleTransactionsException()
                targets.add(target)
                current = self.get_item(name, key)
                condition = op.get("ConditionExpression")
                if condition is not None and not get_filter_expression(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                ).expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        old_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=old_item)
                if op_type != "ConditionCheck":
                    table = self.tables[name]
                    # An update changes the stored item in place; a put or a delete replaces it.
                    before = copy.deepcopy(current) if op_type == "Update" else current
                    written.append((table, *self.get_keys_value(table, key), before))
                    _write(self, op_type, name, key, op)
                reasons.append((None, None, None))
            except (MultipleTransactionsException, MockValidationException):
                _put_back(written)
                raise
            except ConditionalCheckFailed as e:
                reasons.append(("ConditionalCheckFailed", str(e.message), old_item))
            except Exception as e:  # noqa: BLE001 - as moto: any other failure cancels, named by its type
                reasons.append((type(e).__name__, str(e), old_item))
        if any(code is not None for code, _, _ in reasons):
            _put_back(written)
            raise TransactionCanceledException(reasons)

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _key_of(backend: Any, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    """The key of the item a transaction's operation is on."""
    if op_type != "Put":
        return op["Key"]
    table = backend.get_table(op["TableName"])
    key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = op["Item"][table.range_key_attr]
    return key


def _write(backend: Any, op_type: str, name: str, key: dict[str, Any], op: dict[str, Any]) -> None:
    """One write of a transaction whose condition, if any, has been checked."""
    if op_type == "Put":
        backend.put_item(name, op["Item"])
    elif op_type == "Delete":
        backend.delete_item(name, key)
    else:
        backend.update_item(
            name,
            key,
            update_expression=op["UpdateExpression"],
            expression_attribute_names=op.get("ExpressionAttributeNames"),
            expression_attribute_values=op.get("ExpressionAttributeValues"),
        )


def _put_back(written: list[_Backup]) -> None:
    """Undo a transaction's writes: each item it wrote is again what it was (or absent)."""
    for table, hash_value, range_value, before in reversed(written):
        if range_value is None:
            if before is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = before
        elif before is None:
            table.items[hash_value].pop(range_value, None)
        else:
            table.items[hash_value][range_value] = before


# DynamoDB honours a TransactWriteItems' ClientRequestToken "for 10 minutes after the first
# request that uses it is completed":
# https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html#DDB-TransactWriteItems-request-ClientRequestToken
CLIENT_TOKEN_VALID_S = 600.0


@dataclass(slots=True)
class TokenUse:
    """What a client request token was first used for, and what came of it."""

    digest: bytes  # of the request's other parameters
    answer: Any  # moto's answer if the transaction committed, else None (cancelled)
    expires: float  # on the ledger's clock


class ClientRequestTokens:
    """The tokens of TransactWriteItems that completed in the last 10 minutes, oldest first.

    A token's window counts from its first completion, so insertion order is expiry order
    and forgetting the expired tokens pops them from the front. A token costs under 1 kB
    (far less than the items its transaction stored in moto); ``MAX_TOKENS`` bounds the
    ledger even if more transactions than that complete within 10 minutes, by forgetting
    the oldest tokens early (a client retries within seconds).
    """

    MAX_TOKENS = 100_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._uses: OrderedDict[Hashable, TokenUse] = OrderedDict()
        # Held across a token's check, transaction and record. Requests are serialised
        # already (SerializedApp); this keeps it right for in-process moto too, at no cost.
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._uses)

    def get(self, token: Hashable) -> TokenUse | None:
        self._forget_expired()
        return self._uses.get(token)

    def record(self, token: Hashable, digest: bytes, answer: Any) -> None:
        """A completed use of ``token``: ``answer`` if it committed, None if it was cancelled."""
        self._forget_expired()
        use = self._uses.get(token)
        if use is not None:
            use.answer = answer  # a cancelled first use, run again: its window stands
            return
        self._uses[token] = TokenUse(digest, answer, self._clock() + CLIENT_TOKEN_VALID_S)
        if len(self._uses) > self.MAX_TOKENS:
            self._uses.popitem(last=False)

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._uses and next(iter(self._uses.values())).expires <= now:
            self._uses.popitem(last=False)


def request_digest(raw_body: bytes | str) -> bytes:
    """A digest of a JSON request's parameters other than its ClientRequestToken."""
    request = json.loads(raw_body)
    request.pop("ClientRequestToken", None)
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).digest()


def _patch_client_request_tokens() -> None:
    """TransactWriteItems honours ClientRequestToken, as DynamoDB does; moto ignores it.

    botocore gives every TransactWriteItems a token and retries a request whose answer
    was lost with the same one: moto would run that transaction twice. As DynamoDB does,
    a token that committed answers success again without writing; used with other
    parameters it answers IdempotentParameterMismatchException; one whose transaction
    was cancelled runs again. Requests that fail otherwise (validation, unknown table)
    are not recorded: they did not complete a transaction.
    """
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException, TransactionCanceledException
    from moto.dynamodb.responses import DynamoHandler

    class IdempotentParameterMismatchException(DynamodbException):
        def __init__(self) -> None:
            super().__init__(
                ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
                "The request uses the same client token as a previous, but not identical request.",
            )

    original = DynamoHandler.transact_write_items
    tokens = ClientRequestTokens()

    def transact_write_items(self: Any) -> Any:
        token = self.body.get("ClientRequestToken")
        if not token:
            return original(self)
        # Tokens are per account and region, as DynamoDB's tables are.
        key = (self.current_account, self.region, token)
        digest = request_digest(self.raw_body)
        with tokens.lock:
            use = tokens.get(key)
            if use is not None and use.digest != digest:
                raise IdempotentParameterMismatchException()
            if use is not None and use.answer is not None:
                return use.answer
            try:
                answer = original(self)
            except TransactionCanceledException:
                tokens.record(key, digest, None)
                raise
            tokens.record(key, digest, answer)
            return answer

    DynamoHandler.transact_write_items = transact_write_items  # type: ignore[method-assign]


def patch_partition_queries() -> None:
    """Make a Query on a table's own key read one partition, not the whole table.

    moto answers ``Query(call_id = :id)`` by sorting every item of the table and then
    filtering, so reading one call's packets got slower with every packet stored by any
    call. moto then keeps the items of the queried partition and sorts them by sort key,
    so reading only that partition gives the same answer, for the table and for its local
    secondary indexes (same partition key). Serialised requests make a per-table hint
    safe. Queries on a global index are moto's own.
    """
    from moto.dynamodb.models.table import Table

    original_query, original_all_items = Table.query, Table.all_items
    # moto's backend passes index_name positionally; its place is checked by check_moto.
    index_name_at = tuple(inspect.signature(original_query).parameters).index("index_name") - 2

    def all_items(self: Any) -> Any:
        hint = getattr(self, "_partition_hint", None)
        if hint is not None and self.range_key_attr:
            return list(self.items.get(hint, {}).values())
        return original_all_items(self)

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        on_index = kwargs.get("index_name") or (len(args) > index_name_at and args[index_name_at])
        # A local secondary index shares the table's partition key: its query keeps the
        # items of the one partition too (then sorts them by the index's key). A global
        # index's partitions are not the table's.
        on_global_index = on_index and on_index not in {i.name for i in self.indexes}
        if on_global_index or hash_key is None:
            return original_query(self, hash_key, *args, **kwargs)
        self._partition_hint = hash_key
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            self._partition_hint = None

    Table.all_items = all_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]


UPDATE_CACHE_SIZE = 1024


@dataclass(frozen=True)
class _ParsedUpdate:
    """A parsed UpdateExpression: its text, moto's tree of it, and that tree pickled."""

    text: str
    tree: Any
    pickled: bytes


def patch_update_expressions() -> None:
    """Parse each distinct UpdateExpression once, copy its tree cheaply, and check what
    depends on its text alone once per text, names and table.

    moto parses an UpdateItem's expression in its request handler and again in its
    backend, then validates it on a deep copy of the tree, walking the copy once per
    check. The worker's UpdateItems spent most of moto's time on them. So:

    - The tree is a pure function of the text, and moto only reads it: it is parsed once
      (the cache holds the few expressions the app uses, bounded in case of others).
    - The validator's copy of a cached tree is unpickled from the tree pickled once, the
      same objects as ``copy.deepcopy`` makes (the nodes are plain objects, copied by the
      same ``__reduce_ex__``), in a third of the time.
    - Three of the validator's checks read only the tree, the expression's names and the
      table's key attributes (one action of each kind, no overlapping paths, no key
      updated), and change nothing. Once they have passed for a text, names and table
      keys, they pass again: they are skipped. An expression they refuse is never
      recorded, so it is refused every time, as moto does.
    """
    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]

    original_make = UpdateExpressionParser.make.__func__
    original_init = validators.UpdateExpressionValidator.__init__
    copy_of = validators.deepcopy
    text_checks = (
        validators.ActionCountValidator,
        validators.OverlappingPathsValidator,
        validators.UpdateHashRangeKeyValidator,
    )
    parsed: dict[str, _ParsedUpdate] = {}
    by_tree: dict[int, _ParsedUpdate] = {}  # a cached tree lives as long as the server: its id is its own
    passed: set[Hashable] = set()

    def make(cls: Any, expression_str: str) -> Any:
        entry = parsed.get(expression_str)
        if entry is not None:
            return entry.tree
        tree = original_make(cls, expression_str)
        if len(parsed) < UPDATE_CACHE_SIZE:
            try:
                pickled = pickle.dumps(tree, protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError):
                return tree  # not kept: moto's own parse and copy, every time
            parsed[expression_str] = by_tree[id(tree)] = _ParsedUpdate(expression_str, tree, pickled)
        return tree

    def cached(tree: Any) -> _ParsedUpdate | None:
        entry = by_tree.get(id(tree))
        return entry if entry is not None and entry.tree is tree else None

    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        entry = cached(value) if memo is None else None
        # Bytes this process pickled itself, from a tree moto parsed.
        return copy_of(value, memo) if entry is None else pickle.loads(entry.pickled)  # noqa: S301

    def __init__(self: Any, expression: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, expression, *args, **kwargs)
        entry = cached(expression)
        self._text_checks_key = None
        if entry is not None:
            names = frozenset((self.expression_attribute_names or {}).items())
            self._text_checks_key = (entry.text, names, tuple(self.table.table_key_attrs))

    def validate(self: Any) -> Any:
        key = self._text_checks_key
        checked = key is not None and key in passed
        node = self.node_to_validate
        for processor in self.processors:
            if not (checked and isinstance(processor, text_checks)):
                node = processor.traverse(node)
        if key is not None and not checked and len(passed) < UPDATE_CACHE_SIZE:
            passed.add(key)
        return node

    UpdateExpressionParser.make = classmethod(make)
    validators.deepcopy = deepcopy  # type: ignore[assignment]
    validators.UpdateExpressionValidator.__init__ = __init__  # type: ignore[method-assign]
    validators.UpdateExpressionValidator.validate = validate  # type: ignore[method-assign]


# A value placeholder of an expression, as moto's own lexer reads one (comparisons.py), so
# that the cache keys on every value the parse can use.
_VALUE_PLACEHOLDER = re.compile(r":[A-z0-9\-_]+")
CONDITION_CACHE_SIZE = 1024


def patch_condition_expression_parsing() -> None:
    """Parse each distinct condition once, not once per write that carries it.

    moto parses the ConditionExpression of every transaction item, PutItem and DeleteItem
    (UpdateItem parses its own, and is left as it is): a packet's transaction (two
    conditions) spent a third of moto's time there. The tree is a pure function of the
    text, its names and the values it names (substituted into it), and moto only reads
    it. So the cache is keyed by those, not by the request's other values (a timestamp, a
    token), and holds the most recently used (bounded: a condition that names a token is
    new on every request). A text moto refuses raises as before, and is not kept.
    """
    from moto.dynamodb import comparisons, models
    from moto.dynamodb.models import table

    original = comparisons.get_filter_expression
    cache: OrderedDict[str, Any] = OrderedDict()
    lock = threading.Lock()

    def get_filter_expression(expr: str | None, names: dict[str, str] | None, values: dict[str, Any] | None) -> Any:
        if not expr:
            return original(expr, names, values)
        named = {k: values[k] for k in _VALUE_PLACEHOLDER.findall(expr) if k in values} if values else {}
        key = json.dumps([expr, names, named], sort_keys=True)
        with lock:
            tree = cache.get(key)
            if tree is not None:
                cache.move_to_end(key)
                return tree
        tree = original(expr, names, values)
        with lock:
            cache[key] = tree
            if len(cache) > CONDITION_CACHE_SIZE:
                cache.popitem(last=False)
        return tree

    for module in (comparisons, models, table):
        setattr(module, "get_filter_expression", get_filter_expression)  # noqa: B010 - not every module declares it


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

    apply_patches()
    from devstack.faults import wrap
    from devstack.ttl import TtlEndpoint
    from devstack.usage import UsageMeter

    # LOCAL_FAULTS inside the lock: a TransactionConflict reads moto's state, and a LostResponse
    # commits and drops as one step. A malformed spec raises here, before "ready". The usage
    # meter behind it sees only what moto serves (a faulted request bills nothing), inside
    # the lock too, so the items it reads around a write are that write's. The local TTL's
    # sweep (devstack.ttl) also runs inside the lock, and is never faulted nor billed.
    app = SerializedApp(TtlEndpoint(wrap(UsageMeter(DomainDispatcherApplication(create_backend_app)))))
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

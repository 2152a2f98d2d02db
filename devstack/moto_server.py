"""Run moto's own server (DynamoDB, SQS, ...) with two fixes that make it behave like AWS under load.

1. Requests are served one at a time. moto's threaded server runs every request in its
   own thread with no lock around the backends, so a conditional write can interleave
   with another thread between its check and its write, and a cancelled transaction
   restores a snapshot of whole tables, wiping out items other threads wrote meanwhile.
   DynamoDB guarantees atomic conditional writes and isolated transactions; serialising
   the backend calls gives the same guarantees here. moto is pure Python under one GIL,
   so nothing is lost in throughput.
2. ``TransactWriteItems`` backs up the items it touches instead of deep-copying every
   table it touches. moto's copy costs time proportional to the table, so an ingest
   path that writes one packet per transaction slowed down as the packets table grew.

Run as ``python -m devstack.moto_server --port N``; it prints ``ready`` on stdout once it
accepts connections.
"""

from __future__ import annotations

import argparse
import copy
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SerializedApp:
    """Serve one request at a time through the wrapped WSGI app."""

    def __init__(self, app: _WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


def patch_transactions() -> None:
    """Make moto's TransactWriteItems back up touched items, not whole tables."""
    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    class _TableKeepingCopy:
        # moto's transact_write_items calls copy.deepcopy(table); hand back the table
        # itself so that its rollback is a no-op and ours (below) restores the items.
        @staticmethod
        def deepcopy(obj: Any, memo: dict[int, Any] | None = None) -> Any:
            return obj if isinstance(obj, Table) else copy.deepcopy(obj, memo)

    models.copy = _TableKeepingCopy  # type: ignore[assignment]
    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        backups = []
        for entry in transact_items:
            op_type, op = next(iter(entry.items()))
            table_name = op.get("TableName")
            if table_name not in self.tables:
                continue
            table = self.tables[table_name]
            if op_type == "Put":
                names = [n for n in (table.hash_key_attr, table.range_key_attr) if n]
                key = {n: op["Item"][n] for n in names if n in op["Item"]}
            else:
                key = op.get("Key", {})
            try:
                current = self.get_item(table_name, key)
            except Exception:  # noqa: BLE001, S112 - moto reports a bad key itself, below
                continue
            backups.append((table_name, key, copy.deepcopy(current)))
        try:
            original(self, transact_items)
        except Exception:
            for table_name, key, item in reversed(backups):
                table = self.tables[table_name]
                hash_key, range_key = self.get_keys_value(table, key)
                table.delete_item(hash_key, range_key)
                if item is not None:
                    table.put_item(item.to_json()["Attributes"])
            raise

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def serve(host: str, port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # a line per request drowns the stack's own log

    patch_transactions()
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

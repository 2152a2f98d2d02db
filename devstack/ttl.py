"""DynamoDB's Time to Live, which moto does not run: expired items deleted by the moto server.

On AWS, DynamoDB deletes an item some time (usually within days) after the epoch second in
its table's TTL attribute, at no charge. The local stack deletes them every
``TTL_SWEEP_S`` instead, so that what expiry does (packets leaving after their call was
archived) happens here too.

Inside the moto server, in one pass over moto's own items (``TtlEndpoint``, ``POST
/_local_ttl``), not through Scan: moto sorts every item of the table for each Scan page
and walks to the page's start, so paging through a table of a hundred thousand packets
cost it minutes of CPU while it served nothing else (a `make bench` run saw its ingest
requests time out behind the sweep). The pass holds moto for milliseconds. Like DynamoDB,
it reads each table's TTL attribute from the table (UpdateTimeToLive: devstack.provision
sets the template's), and a deletion bills nothing (the usage meter never sees it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

import httpx

from devstack.template import resources_of_type

logger = logging.getLogger("devstack")

TTL_SWEEP_S = 600.0
TTL_PATH = "/_local_ttl"

_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def ttl_tables(template: dict[str, Any]) -> dict[str, str]:
    """Each table with TTL enabled in the template, by logical id (the local table name), and its attribute."""
    tables: dict[str, str] = {}
    for name, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        spec = resource["Properties"].get("TimeToLiveSpecification") or {}
        if spec.get("Enabled") is True:
            tables[name] = spec["AttributeName"]
    return tables


def _expired(item: Any, attribute: str, now_s: float) -> bool:
    """As DynamoDB: a number of epoch seconds at or before now; any other value never expires."""
    value = item.attrs.get(attribute)
    if value is None or value.type != "N":
        return False
    try:
        return Decimal(value.value) <= Decimal(str(now_s))
    except InvalidOperation:
        return False


def expire_items(now_s: float) -> int:
    """Delete, in every table of this moto server whose TTL is enabled, the items expired at
    ``now_s``; how many were deleted. Runs in the moto server, under its lock."""
    from moto.dynamodb.models import dynamodb_backends

    deleted = 0
    # dict's own views: only the accounts and regions that exist (moto creates one on a lookup).
    for regions in dict.values(dynamodb_backends):
        for backend in dict.values(regions):
            for table in backend.tables.values():
                if table.ttl.get("TimeToLiveStatus") != "ENABLED":
                    continue
                attribute = table.ttl["AttributeName"]
                for item in [i for i in table.all_items() if _expired(i, attribute, now_s)]:
                    range_key = item.attrs[table.range_key_attr] if table.range_key_attr else None
                    table.delete_item(item.attrs[table.hash_key_attr], range_key)
                    deleted += 1
    return deleted


class TtlEndpoint:
    """WSGI middleware of the moto server: ``POST /_local_ttl?now=<epoch seconds>`` runs
    expire_items and answers ``{"deleted": n}``; every other request passes through."""

    def __init__(self, app: _WsgiApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != TTL_PATH:
            return self._app(environ, start_response)
        now = parse_qs(environ.get("QUERY_STRING", "")).get("now", [""])[0]
        answer: dict[str, Any]
        try:
            answer, status = {"deleted": expire_items(float(now) if now else time.time())}, "200 OK"
        except ValueError:
            answer, status = {"error": f"now must be epoch seconds, not {now!r}"}, "400 Bad Request"
        data = json.dumps(answer).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]


def remove_expired(moto_endpoint: str, *, now_s: float) -> int:
    """Have the moto server at ``moto_endpoint`` delete the items expired at ``now_s``; how many it deleted."""
    response = httpx.post(f"{moto_endpoint}{TTL_PATH}", params={"now": repr(now_s)}, timeout=60)
    response.raise_for_status()
    deleted: int = response.json()["deleted"]
    return deleted


class TtlSweeper:
    """``remove_expired`` every ``interval_s`` on a thread of its own, until ``stop()``."""

    def __init__(self, moto_endpoint: str, interval_s: float = TTL_SWEEP_S) -> None:
        self._moto_endpoint = moto_endpoint
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ttl-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                deleted = remove_expired(self._moto_endpoint, now_s=time.time())
            except Exception as exc:  # noqa: BLE001 - a failed sweep is tried again next interval
                if not self._stopping.is_set():
                    logger.warning("TTL sweep failed (%s); next in %.0f s", exc, self._interval_s)
                continue
            if deleted:
                logger.info("TTL: %d expired items deleted", deleted)

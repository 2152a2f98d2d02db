"""DynamoDB's Time to Live, which moto does not run: the template's TTL tables, expired items deleted.

On AWS, DynamoDB deletes an item some time (usually within days) after the epoch second in
its table's TTL attribute, at no charge. The local stack deletes them every
``TTL_SWEEP_S`` instead, so that what expiry does (packets leaving after their call was
archived) happens here too.

Rarely, and a small page at a time: moto serves one request at a time, and a scan of a
table of a few hundred thousand packets held it long enough for other requests to time
out (a `make bench` run saw its baseline's PutItem retried). Packets expire weeks after
they arrive, so a sweep every ten minutes loses nothing a local session can see.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from devstack.template import resources_of_type

logger = logging.getLogger("devstack")

TTL_SWEEP_S = 600.0
# Items a scan request reads: each request holds moto briefly.
SCAN_PAGE_ITEMS = 200


def ttl_tables(template: dict[str, Any]) -> dict[str, str]:
    """Each table with TTL enabled in the template, by logical id (the local table name), and its attribute."""
    tables: dict[str, str] = {}
    for name, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        spec = resource["Properties"].get("TimeToLiveSpecification") or {}
        if spec.get("Enabled") is True:
            tables[name] = spec["AttributeName"]
    return tables


def remove_expired(ddb: Any, tables: Mapping[str, str], *, now_s: float) -> int:
    """Delete the items whose TTL attribute is at or before ``now_s``; how many were deleted."""
    deleted = 0
    for table, attribute in tables.items():
        keys = [k["AttributeName"] for k in ddb.describe_table(TableName=table)["Table"]["KeySchema"]]
        kwargs: dict[str, Any] = {
            "TableName": table,
            "FilterExpression": "#ttl <= :now",
            "ProjectionExpression": ", ".join(f"#k{i}" for i in range(len(keys))),
            "ExpressionAttributeNames": {"#ttl": attribute} | {f"#k{i}": k for i, k in enumerate(keys)},
            "ExpressionAttributeValues": {":now": {"N": str(int(now_s))}},
            "Limit": SCAN_PAGE_ITEMS,
        }
        while True:
            page = ddb.scan(**kwargs)
            for item in page.get("Items", []):
                ddb.delete_item(TableName=table, Key={k: item[k] for k in keys})
                deleted += 1
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return deleted


class TtlSweeper:
    """``remove_expired`` every ``interval_s`` on a thread of its own, until ``stop()``."""

    def __init__(self, ddb: Any, tables: Mapping[str, str], interval_s: float = TTL_SWEEP_S) -> None:
        self._ddb = ddb
        self._tables = dict(tables)
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
                deleted = remove_expired(self._ddb, self._tables, now_s=time.time())
            except Exception as exc:  # noqa: BLE001 - a failed sweep is tried again next interval
                if not self._stopping.is_set():
                    logger.warning("TTL sweep failed (%s); next in %.0f s", exc, self._interval_s)
                continue
            if deleted:
                logger.info("TTL: %d expired items deleted", deleted)

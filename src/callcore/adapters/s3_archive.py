"""CallArchive on S3: each archived call's record as JSON, beside its recording."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from callcore.adapters.aws_errors import dependency, error_code

S3Client = Any


def record_key(call_id: str) -> str:
    return f"calls/{call_id}/record.json"


class S3CallArchive:
    def __init__(self, client: S3Client, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    def save(self, call_id: str, record: dict[str, Any]) -> None:
        body = json.dumps(record, sort_keys=True, indent=1).encode()
        with dependency("S3"):
            self._s3.put_object(Bucket=self._bucket, Key=record_key(call_id), Body=body, ContentType="application/json")

    def find(self, call_id: str) -> dict[str, Any] | None:
        try:
            with dependency("S3"):
                body = self._s3.get_object(Bucket=self._bucket, Key=record_key(call_id))["Body"].read()
        except ClientError as exc:
            if error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        record: dict[str, Any] = json.loads(body)
        return record

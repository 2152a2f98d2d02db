"""RecordingStore on S3: one WAV object per call, beside which the call's other files go."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from callcore.adapters.aws_errors import dependency, error_code
from callcore.domain.errors import RecordingExpiredError
from callcore.domain.model import Recording

S3Client = Any

# User metadata travels with the object: whoever holds the WAV (an operator, a bucket
# listing) sees its length without decoding it. The call item's note is what the app reads.
_DURATION = "duration-s"


def recording_key(call_id: str) -> str:
    """Where a call's recording lives: under the call's own prefix (call ids are S3-safe)."""
    return f"calls/{call_id}/recording.wav"


class S3RecordingStore:
    def __init__(self, client: S3Client, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    def recording_for(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        return Recording(key=recording_key(call_id), duration_s=round(duration_s, 3), bytes=len(wav))

    def save(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        recording = self.recording_for(call_id, wav, duration_s=duration_s)
        with dependency("S3"):
            # The same packets give the same bytes (callcore.domain.audio.to_wav): two
            # workers racing here write one identical object, and versioning is off.
            self._s3.put_object(
                Bucket=self._bucket,
                Key=recording.key,
                Body=wav,
                ContentType="audio/wav",
                Metadata={_DURATION: f"{duration_s:.3f}"},
            )
        return recording

    def read(self, recording: Recording) -> bytes:
        try:
            with dependency("S3"):
                body: bytes = self._s3.get_object(Bucket=self._bucket, Key=recording.key)["Body"].read()
        except ClientError as exc:
            if error_code(exc) != "NoSuchKey":
                raise
            raise RecordingExpiredError(recording.key) from exc
        return body

    def download_url(self, recording: Recording, *, expires_s: int) -> str:
        # Signing is local (no request): only the credentials' own expiry can cut it short.
        url: str = self._s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._bucket, "Key": recording.key, "ResponseContentType": "audio/wav"},
            ExpiresIn=expires_s,
        )
        return url

    def download_origin(self) -> str:
        # The bucket's host as the client presigns it (virtual-hosted or path style, the
        # region's endpoint, or a local endpoint_url): one key's URL shows it for all.
        url = self.download_url(Recording(key=recording_key("origin"), duration_s=0, bytes=0), expires_s=1)
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

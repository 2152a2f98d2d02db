"""What an archived call keeps: one JSON document, beside its recording, that outlives its packets.

A call's packets leave DynamoDB by their TTL (PACKET_RETENTION_DAYS, before it is archived);
its statistics stay on the call item, and this record keeps everything GET shows of it for
as long as the recording: its states and times, packet statistics, AI attempts and result.
The record is plain JSON, readable without this code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from callcore.domain.model import Call, PacketStats

RECORD_VERSION = 1


def archive_record(call: Call, stats: PacketStats, *, archived_at: str) -> dict[str, Any]:
    """The record of ``call`` (COMPLETED or FAILED) as it is archived at ``archived_at``."""
    return {
        "version": RECORD_VERSION,
        "call_id": call.call_id,
        "state": "ARCHIVED",
        "timeline": {
            "created_at": call.created_at,
            "finished_as": call.state.value,
            "finished_at": call.updated_at,
            "archived_at": archived_at,
        },
        "rounds": call.round,
        "last_sequence": call.last_sequence,
        "packets": dataclasses.asdict(stats),
        "ai": {
            "attempts": call.ai_attempts,
            "last_error": call.ai_last_error,
            "history": [dataclasses.asdict(a) for a in call.attempts],
            "transcript": call.transcript,
            "transcript_truncated": call.transcript_truncated,
            "sentiment": dataclasses.asdict(call.sentiment) if call.sentiment else None,
        },
        "failure_reason": call.failure_reason,
        "recording": dataclasses.asdict(call.recording) if call.recording else None,
    }


def stats_from_record(record: dict[str, Any]) -> PacketStats:
    return PacketStats(**record["packets"])

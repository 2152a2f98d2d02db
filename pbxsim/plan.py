"""What a simulated PBX sends for one call: its packets, in the order it sends them."""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# The audio in one packet, and the spacing of the timestamps a plan gives its packets.
PACKET_S = 0.02
# The most packets one batch request may carry (the API's MAX_BATCH_PACKETS; a unit test holds them equal).
MAX_BATCH_PACKETS = 50


@dataclass(frozen=True)
class Rates:
    duplicate: float = 0.05  # a packet is sent a second time
    reorder: float = 0.05  # a packet swaps places with the next one
    late: float = 0.02  # a packet is held back and sent after all the others
    skip: float = 0.0  # a packet is never sent (the stack should report it missing)


@dataclass(frozen=True)
class Send:
    sequence: int
    data: str
    timestamp: float


@dataclass(frozen=True)
class CallPlan:
    call_id: str
    sends: list[Send]
    last_sequence: int
    skipped: frozenset[int]


_WORDS = ("hello", "thanks", "great", "problem", "refund", "account", "order", "please", "call", "back")


def packet_data(rng: random.Random, sequence: int) -> str:
    """Base64 of a few words of 'speech', so the mock AI has something to transcribe."""
    words = " ".join(rng.choice(_WORDS) for _ in range(3))
    return base64.b64encode(f"{words} ({sequence})".encode()).decode()


def plan_call(
    call_id: str,
    packets: int,
    rates: Rates,
    rng: random.Random,
    start_ts: float = 0.0,
    *,
    data: Sequence[str] | None = None,
) -> CallPlan:
    """``packets`` packets of words for the mock AI; with ``data`` (speech frames), one packet per item instead."""
    if data is not None:
        packets = len(data)
    originals = [
        Send(seq, packet_data(rng, seq) if data is None else data[seq], start_ts + seq * PACKET_S)
        for seq in range(packets)
    ]
    skipped = frozenset(s.sequence for s in originals if rng.random() < rates.skip)
    order = [s for s in originals if s.sequence not in skipped]
    late = [s for s in order if rng.random() < rates.late]
    order = [s for s in order if s not in late]
    i = 0
    while i < len(order) - 1:
        if rng.random() < rates.reorder:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2
        else:
            i += 1
    sends: list[Send] = []
    for s in [*order, *late]:
        sends.append(s)
        if rng.random() < rates.duplicate:
            sends.append(s)
    return CallPlan(call_id=call_id, sends=sends, last_sequence=packets - 1, skipped=skipped)


def batch_packets(batch_ms: float, packet_ms: float) -> int:
    """Packets per batch request that cover ``batch_ms`` of audio in ``packet_ms`` packets.

    Rounded half up (50 ms of 20 ms packets is 3), then kept within 1..MAX_BATCH_PACKETS:
    200 ms of 20 ms packets is 10, a second or more is 50.
    """
    if not (batch_ms > 0 and packet_ms > 0 and math.isfinite(batch_ms)):
        raise ValueError(f"a batch needs positive, finite durations, not {batch_ms} ms of {packet_ms} ms packets")
    return max(1, min(MAX_BATCH_PACKETS, math.floor(batch_ms / packet_ms + 0.5)))


def batches(sends: Sequence[Send], size: int) -> list[list[Send]]:
    """The sends, in their planned order (duplicates and reordering included), cut into requests of ``size``;
    the last may be shorter."""
    if size < 1:
        raise ValueError(f"a batch holds at least one packet, not {size}")
    return [list(sends[i : i + size]) for i in range(0, len(sends), size)]

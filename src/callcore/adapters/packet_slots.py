"""How the batch route stores packets: one DynamoDB item per slot of ``SLOT_PACKETS`` sequences.

Why slots: a 200 ms batch of 20 ms packets is one slot, so storing it is one transactional
write of one item of under 2 KB (4 write units) plus the call's check (2), where one item
per packet bills at least 2 units per packet. A slot never holds more than
``SLOT_PACKETS`` packets, so an update bills at most that much, however long the call.
(Prices and counted units: docs/batched-ingest.md.)

Each packet is one binary attribute of its slot item, named by its sequence: the map key
is what makes a sequence stored at most once (``attribute_not_exists`` on it), and binary
audio is a third of the size of its base64 text. The value is packed, not a map of
attributes, because attribute names count towards the billed size:

    >d q 8s  timestamp (float64), received_at_ns (int64), write_id (8 random bytes)
    B        flags: 1 = the data is the bytes of canonical base64 text, else UTF-8 text
    B + n    the declared audio format (UTF-8, 0 to 255 bytes)
    rest     the data
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from callcore.domain.model import Packet

SLOT_PACKETS = 10
# The packed header: timestamp, received_at_ns, write_id, flags, format length.
_HEADER = struct.Struct(">dq8sBB")
_BASE64_BYTES = 1


def slot_of(sequence: int) -> int:
    return sequence // SLOT_PACKETS


def attribute_name(sequence: int) -> str:
    return str(sequence)


def sequence_of(name: str) -> int | None:
    """The sequence a slot attribute holds, or None for the item's keys and expiry."""
    return int(name) if name.isdigit() else None


@dataclass(frozen=True)
class SlotPacket:
    packet: Packet
    received_at_ns: int
    write_id: bytes


def encode(packet: Packet, *, received_at_ns: int, write_id: bytes) -> bytes:
    """The packed value; decoding it gives back the packet exactly, whatever its data's text."""
    data, flags = _data_bytes(packet.data)
    audio_format = (packet.audio_format or "").encode()
    header = _HEADER.pack(packet.timestamp, received_at_ns, write_id, flags, len(audio_format))
    return header + audio_format + data


def decode(sequence: int, value: bytes) -> SlotPacket:
    timestamp, received_at_ns, write_id, flags, format_length = _HEADER.unpack_from(value)
    start = _HEADER.size
    audio_format = value[start : start + format_length].decode() or None
    raw = value[start + format_length :]
    data = base64.b64encode(raw).decode() if flags & _BASE64_BYTES else raw.decode()
    return SlotPacket(
        packet=Packet(
            sequence=sequence, data=data, timestamp=timestamp, audio_format=audio_format, received_at_ns=received_at_ns
        ),
        received_at_ns=received_at_ns,
        write_id=write_id,
    )


def _data_bytes(data: str) -> tuple[bytes, int]:
    """Canonical base64 (what a PBX sends) as its bytes; anything else as its text, unchanged."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data.encode(), 0
    if base64.b64encode(raw).decode() != data:
        return data.encode(), 0
    return raw, _BASE64_BYTES

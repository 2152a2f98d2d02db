"""The batch layout's packed packet: exact round trips, and the size the cost model counts on."""

from __future__ import annotations

import base64

from callcore.adapters import packet_slots
from callcore.domain.model import Packet


def test_a_20_ms_mulaw_packet_packs_to_its_audio_plus_26_bytes() -> None:
    # 160 bytes of audio, not its 216 characters of base64: ten of them and their names
    # keep a slot item under 2 KB, 2 write units.
    data = base64.b64encode(bytes(range(160))).decode()
    value = packet_slots.encode(Packet(1, data, 1.0), received_at_ns=5, write_id=b"12345678")

    assert len(value) == 160 + 26


def test_decoding_gives_back_the_packet_its_arrival_and_write_id() -> None:
    sent = Packet(sequence=42, data="not base64 é", timestamp=1_700_000_000.123456, audio_format="pcm16/8000")
    value = packet_slots.encode(sent, received_at_ns=-3, write_id=b"\0" * 7 + b"\1")

    stored = packet_slots.decode(42, value)

    assert stored == packet_slots.SlotPacket(packet=sent, received_at_ns=-3, write_id=b"\0" * 7 + b"\1")


def test_ten_sequences_share_a_slot_and_attribute_names_are_their_sequences() -> None:
    assert [packet_slots.slot_of(s) for s in (0, 9, 10, 19, 20)] == [0, 0, 1, 1, 2]
    assert packet_slots.sequence_of(packet_slots.attribute_name(1234)) == 1234
    assert packet_slots.sequence_of("call_id") is None
    assert packet_slots.sequence_of("slot") is None

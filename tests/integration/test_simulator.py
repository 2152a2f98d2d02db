"""The simulator against a real stack: it finds a packet the stack drops, and passes an honest one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from callcore.bootstrap import Ports
from callcore.domain.model import Packet
from callcore.ports import PacketWrite
from pbxsim.__main__ import main
from tests.conftest import LiveServer


class DroppingStore:
    """The real store, except that it answers 'stored' for sequence 3 and stores nothing."""

    def __init__(self, store: object) -> None:
        self._store = store

    def add_packet(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        if packet.sequence == 3:
            return PacketWrite(stored=True)
        return self._store.add_packet(call_id, packet, now=now, received_at_ns=received_at_ns)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_the_simulator_reports_a_packet_the_stack_dropped_and_exits_non_zero(ports: Ports, tmp_path: Path) -> None:
    from ingest.app import create_app

    dropping = replace(ports, store=DroppingStore(ports.store))  # type: ignore[arg-type]
    out = tmp_path / "report.json"
    with LiveServer(create_app(dropping)) as server:
        code = main(
            [
                "--base-url",
                server.url,
                "--calls",
                "4",
                "--packets",
                "6",
                "--interval-ms",
                "0",
                "--no-wait",
                "--quiet",
                "--json",
                str(out),
                "--seed",
                "1",
            ]
        )
    report = json.loads(out.read_text())
    assert code == 1
    assert report["lost_packets"] == 4
    assert all(lost == [3] for lost in report["lost_by_call"].values())
    assert report["server_errors"] == 0


def test_the_simulator_passes_an_honest_stack_despite_duplicates_and_reordering(live_api: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "--base-url",
            live_api,
            "--calls",
            "10",
            "--packets",
            "8",
            "--interval-ms",
            "0",
            "--duplicate-rate",
            "0.3",
            "--reorder-rate",
            "0.3",
            "--late-rate",
            "0.2",
            "--skip-rate",
            "0.1",
            "--no-wait",
            "--quiet",
            "--json",
            str(out),
            "--seed",
            "2",
        ]
    )
    report = json.loads(out.read_text())
    assert code == 0
    assert report["lost_packets"] == 0
    assert report["responses"]["200"] > 0  # the duplicates were sent and recognised
    assert report["responses"]["409"] == report["responses"]["other"] == 0
    assert report["responses"]["202"] + report["responses"]["200"] == report["packets_sent"]

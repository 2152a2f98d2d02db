"""Batched ingest, POST /v1/call/stream/{call_id}/batch: every status, the limits, and the
single route's invariants for each packet of a batch under real concurrency (marked
``chaos``: `make test` runs the races again with LOCAL_FAULTS=chaos)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

from callcore.bootstrap import Ports
from tests.integration.helpers import (
    FAULTS_ON,
    b64,
    packet,
    post_concurrently_retrying,
    read_store,
    stored_packets,
)


def batch(*packets: dict[str, Any]) -> dict[str, Any]:
    return {"packets": list(packets)}


def statuses(response: httpx.Response) -> list[tuple[int, str]]:
    return [(r["sequence"], r["status"]) for r in response.json()["results"]]


def test_each_packet_gets_its_own_status_in_request_order(api: httpx.Client, ports: Ports, call_id: str) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(2, b64("two"))).status_code == 202

    response = api.post(
        f"/v1/call/stream/{call_id}/batch",
        json=batch(packet(1), packet(2, b64("two")), packet(3, b64("three")), packet(3, b64("other")), packet(0)),
    )

    assert response.status_code == 200, response.text
    assert response.json()["call_id"] == call_id
    assert statuses(response) == [(1, "accepted"), (2, "duplicate"), (3, "accepted"), (3, "conflict"), (0, "accepted")]
    assert stored_packets(ports, call_id) == {
        0: packet(0)["data"],
        1: packet(1)["data"],
        2: b64("two"),
        3: b64("three"),
    }
    assert api.get(f"/v1/call/{call_id}").json()["packets"]["duplicates"] == 1


def test_after_the_end_new_packets_are_ended_and_stored_ones_duplicate(
    api: httpx.Client, ports: Ports, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}/batch", json=batch(packet(0), packet(1))).status_code == 200
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202

    response = api.post(f"/v1/call/stream/{call_id}/batch", json=batch(packet(1), packet(2)))

    assert statuses(response) == [(1, "duplicate"), (2, "ended")]
    assert set(stored_packets(ports, call_id)) == {0, 1}


def test_sending_the_same_batch_again_is_safe(api: httpx.Client, ports: Ports, call_id: str) -> None:
    body = batch(*(packet(s) for s in range(10)))
    first = api.post(f"/v1/call/stream/{call_id}/batch", json=body)
    again = api.post(f"/v1/call/stream/{call_id}/batch", json=body)

    assert [s for _, s in statuses(first)] == ["accepted"] * 10
    assert [s for _, s in statuses(again)] == ["duplicate"] * 10
    assert len(stored_packets(ports, call_id)) == 10


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (batch(*(packet(s) for s in range(51))), 413, "51 packets; a batch holds at most 50"),
        (batch(packet(0), packet(1, "A" * (256 * 1024 + 4))), 413, "packets[1].data is 262148 bytes"),
        (batch(packet(0), packet(1, "A" * (32 * 1024 + 4))), 413, "packets[1].data is 32772 bytes"),
        (batch(), 422, "packets"),
        ({"packets": [{"sequence": 1}]}, 422, "data"),
        ({"packet": [packet(0)]}, 422, "packets"),
    ],
)
def test_limits_and_malformed_batches_store_nothing(
    api: httpx.Client, ports: Ports, call_id: str, *, body: dict[str, Any], status: int, names: str
) -> None:
    response = api.post(f"/v1/call/stream/{call_id}/batch", json=body)

    assert response.status_code == status, response.text
    assert names in response.json()["message"]
    assert stored_packets(ports, call_id) == {}


def test_a_call_streamed_in_batches_takes_single_packets_by_the_same_rules(
    api: httpx.Client, ports: Ports, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}/batch", json=batch(*(packet(s) for s in (0, 2, 1)))).status_code == 200

    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).json()["status"] == "duplicate"
    conflict = api.post(f"/v1/call/stream/{call_id}", json=packet(1, b64("other")))
    assert conflict.status_code == 409, conflict.text
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(3)).status_code == 202
    too_big = api.post(f"/v1/call/stream/{call_id}", json=packet(4, "A" * (32 * 1024 + 4)))
    assert too_big.status_code == 413, too_big.text
    assert "streams in batches" in too_big.json()["message"]
    assert statuses(api.post(f"/v1/call/stream/{call_id}/batch", json=batch(packet(3), packet(4)))) == [
        (3, "duplicate"),
        (4, "accepted"),
    ]

    assert set(stored_packets(ports, call_id)) == {0, 1, 2, 3, 4}
    stats = api.get(f"/v1/call/{call_id}").json()["packets"]
    # Arrival order is request order: 2 came before 1.
    assert (stats["received"], stats["duplicates"], stats["out_of_order"]) == (5, 2, 1)
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(4)).json()["status"] == "duplicate"
    ended = api.post(f"/v1/call/stream/{call_id}", json=packet(5))
    assert ended.status_code == 409, ended.text


@pytest.mark.chaos
def test_single_packets_and_batches_racing_on_a_new_call_accept_each_sequence_once(
    live_api: str, ports: Ports, call_id: str
) -> None:
    # Both routes race to create the call, so either may fix where its packets live; every
    # sequence is sent by both, twice.
    whole = batch(*(packet(s) for s in range(10)))
    singles = [(f"/v1/call/stream/{call_id}", packet(s)) for s in range(10)]
    requests = [(f"/v1/call/stream/{call_id}/batch", whole), *singles, (f"/v1/call/stream/{call_id}/batch", whole)]

    answers = post_concurrently_retrying(live_api, [*requests, *singles])

    assert answers.unexpected == []
    accepted: Counter[int] = Counter()
    for response in answers.final:
        if response.request.url.path.endswith("/batch"):
            assert response.status_code == 200, response.text
            accepted.update(s for s, st in statuses(response) if st == "accepted")
        else:
            assert response.status_code in (200, 202), response.text
            accepted.update([response.json()["sequence"]] if response.status_code == 202 else [])
    assert max(accepted.values()) == 1  # a sequence is accepted at most once, by either route
    assert read_store(lambda: stored_packets(ports, call_id)) == {s: packet(s)["data"] for s in range(10)}
    if not FAULTS_ON:  # a 503 that hid a committed write turns its "accepted" into "duplicate"
        assert set(accepted) == set(range(10))


@pytest.mark.chaos
def test_overlapping_batches_accept_each_sequence_at_most_once_and_store_what_they_accepted(
    live_api: str, ports: Ports, call_id: str
) -> None:
    # Identical batches, batches sharing part of their sequences, and one sending the same
    # sequences with other data: all at once.
    same = batch(*(packet(s) for s in range(10)))
    shared = batch(*(packet(s) for s in range(5, 15)))
    other = batch(*(packet(s, b64(f"other-{s}")) for s in range(8, 12)))
    requests = [(f"/v1/call/stream/{call_id}/batch", b) for b in (same, same, shared, shared, other, other)]

    answers = post_concurrently_retrying(live_api, requests)

    assert answers.unexpected == []
    assert all(r.status_code == 200 for r in answers.final), [r.text for r in answers.final]
    results = [(s, st) for r in answers.final for s, st in statuses(r)]
    accepted = Counter(s for s, st in results if st == "accepted")
    assert max(accepted.values()) == 1  # a sequence is accepted at most once
    stored = read_store(lambda: stored_packets(ports, call_id))
    assert set(stored) == set(range(15))
    for sequence, data in stored.items():
        answers_for = {st for s, st in results if s == sequence}
        assert answers_for <= {"accepted", "duplicate", "conflict"}
        # Whoever's data is stored, every answer agrees with it: "conflict" only for the other data.
        assert data in (packet(sequence)["data"], b64(f"other-{sequence}"))
    if not FAULTS_ON:  # a 503 that hid a committed batch turns its "accepted" into "duplicate"
        assert set(accepted) == set(range(15))


@pytest.mark.chaos
def test_batches_racing_the_end_every_accepted_packet_is_stored_and_in_the_work(
    live_api: str, ports: Ports, call_id: str
) -> None:
    path = f"/v1/call/stream/{call_id}/batch"
    assert post_concurrently_retrying(live_api, [(path, batch(packet(0)))]).final[0].status_code == 200
    batches = [(path, batch(*(packet(s) for s in range(b, b + 5)))) for b in range(1, 41, 5)]
    requests = [*batches[:4], (f"/v1/call/{call_id}/end", None), *batches[4:]]

    answers = post_concurrently_retrying(live_api, requests)

    assert answers.unexpected == []
    end = answers.final[4]
    assert end.status_code == 202, end.text
    results = [(s, st) for r in answers.final if r.request.url.path == path for s, st in statuses(r)]
    accepted = {s for s, st in results if st == "accepted"}
    ended = {s for s, st in results if st == "ended"}
    stored = set(read_store(lambda: stored_packets(ports, call_id)))
    # The worker reads the call's packets after the end: what is stored now is its work.
    assert accepted <= stored
    assert not (ended & stored)
    assert stored | ended == set(range(41))

"""The invariants of the product, each under real concurrency: many requests in flight at once
against uvicorn and a moto server, never one after another.

Every test here is marked ``chaos``: `make test` runs them a second time with
``LOCAL_FAULTS=chaos``, where moto answers like AWS under stress (transaction conflicts,
throttling, 5xx, answers lost after the write committed). Clients then retry 503s as a PBX
would, and what must hold still holds. Where a fault legitimately changes an answer (a 503
that hid a committed write is followed by "duplicate" instead of "accepted"), the test
says so next to the assertion.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from callcore.bootstrap import AwsClients, Ports
from tests.integration.helpers import (
    FAULTS_ON,
    audio_data,
    drain_queue,
    get_retrying,
    packet,
    post_concurrently_retrying,
    post_retrying,
    read_store,
    stored_packets,
)

pytestmark = pytest.mark.chaos

STORED = {200, 202}  # accepted now, or accepted by an attempt whose answer became a 503


def _all_pages(api: httpx.Client, state: str) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"state": state, "limit": 100}
        if cursor:
            params["cursor"] = cursor
        response = get_retrying(api, "/v1/calls", params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [c["call_id"] for c in page["calls"]]
        cursor = page["next_cursor"]
        if not cursor:
            return ids


def test_racing_first_packets_of_a_new_call_are_all_stored_and_the_call_exists_once(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str
) -> None:
    answers = post_concurrently_retrying(live_api, [(f"/v1/call/stream/{call_id}", packet(s)) for s in range(20)])
    assert answers.unexpected == []
    statuses = [r.status_code for r in answers.final]
    assert set(statuses) <= STORED if FAULTS_ON else statuses == [202] * 20
    assert stored_packets(ports, call_id) == {s: audio_data(s) for s in range(20)}
    assert _all_pages(api, "IN_PROGRESS").count(call_id) == 1


def test_concurrent_distinct_packets_are_all_received(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str
) -> None:
    n = 60
    first = post_concurrently_retrying(live_api, [(f"/v1/call/stream/{call_id}", packet(0))])
    assert first.final[0].status_code in STORED
    answers = post_concurrently_retrying(live_api, [(f"/v1/call/stream/{call_id}", packet(s)) for s in range(1, n + 1)])
    assert answers.unexpected == []
    counts = Counter(r.status_code for r in answers.final)
    assert set(counts) <= STORED if FAULTS_ON else counts == {202: n}
    stats = get_retrying(api, f"/v1/call/{call_id}").json()["packets"]
    assert stats["received"] == n + 1
    assert stats["missing"] == []
    assert len(stored_packets(ports, call_id)) == n + 1


# Sequence 0 opens a call with another transaction than the other sequences: race both.
@pytest.mark.parametrize("sequence", [0, 7])
def test_the_same_packet_ten_times_at_once_is_stored_once_with_one_202(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str, sequence: int
) -> None:
    answers = post_concurrently_retrying(live_api, [(f"/v1/call/stream/{call_id}", packet(sequence))] * 10)
    assert answers.unexpected == []
    counts = Counter(r.status_code for r in answers.final)
    duplicates_answered = sum(r.json()["status"] == "duplicate" for r in answers.final)
    if FAULTS_ON:
        # The one write that stored it may have been answered 503 (say its answer was
        # lost and the resend was throttled); that client's retry is then a duplicate.
        assert set(counts) <= STORED and counts[202] <= 1
    else:
        assert counts == {202: 1, 200: 9}
    assert duplicates_answered == counts[200]
    assert stored_packets(ports, call_id) == {sequence: audio_data(sequence)}
    stats = get_retrying(api, f"/v1/call/{call_id}").json()["packets"]
    assert stats["received"] == 1
    # Each 200 was answered after its duplicate was counted; a retried count may count twice.
    assert stats["duplicates"] >= counts[200] if FAULTS_ON else stats["duplicates"] == 9


@pytest.mark.parametrize("sequence", [0, 3])
def test_one_sequence_with_different_data_at_once_keeps_exactly_the_accepted_one(
    live_api: str, ports: Ports, call_id: str, sequence: int
) -> None:
    bodies = [packet(sequence, data=f"variant-{i}") for i in range(10)]
    answers = post_concurrently_retrying(live_api, [(f"/v1/call/stream/{call_id}", b) for b in bodies])
    assert answers.unexpected == []
    counts = Counter(r.status_code for r in answers.final)
    # The winner is answered 202, or 200 "duplicate" if its first answer was a 503.
    assert counts[409] == 9 and counts[202] + counts[200] == 1
    winner = next(b for b, r in zip(bodies, answers.final, strict=True) if r.status_code in STORED)
    assert stored_packets(ports, call_id) == {sequence: winner["data"]}


def test_packets_racing_the_end_are_either_stored_and_in_the_ai_work_or_refused(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str
) -> None:
    # 8 streams send packets back to back; the end goes out while they are in full flow,
    # as soon as 40 packets have been accepted, so packets are in flight on both sides of it.
    streams, per_stream = 8, 25
    seen: list[int] = []

    async def race() -> tuple[httpx.Response, list[httpx.Response]]:
        accepted_enough = asyncio.Event()
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=live_api, timeout=60) as client:

            async def stream(first: int) -> None:
                for seq in range(first, first + per_stream):
                    answers.append(await post_retrying(client, f"/v1/call/stream/{call_id}", packet(seq), seen))
                    if sum(a.status_code in STORED for a in answers) >= 40:
                        accepted_enough.set()

            async def end() -> httpx.Response:
                await accepted_enough.wait()
                return await post_retrying(client, f"/v1/call/{call_id}/end", None, seen)

            results = await asyncio.gather(end(), *(stream(1 + i * per_stream) for i in range(streams)))
        ended = results[0]
        assert ended is not None
        return ended, answers

    assert asyncio.run(_first_packet(live_api, call_id)).status_code in STORED
    end, responses = asyncio.run(race())
    assert [s for s in seen if not (200 <= s < 300 or 400 <= s < 500 or s == 503)] == []
    assert end.status_code == 202
    stored = {r.json()["sequence"] for r in responses if r.status_code in STORED}
    refused = [r for r in responses if r.status_code not in STORED]
    assert len(stored) >= 40
    assert refused, "the end should have landed while packets were still being sent"
    assert all(r.status_code == 409 and r.json()["error"] == "call_not_in_progress" for r in refused)
    # What the worker reads for the call is exactly packet 0 plus every packet answered 202
    # (or 200: stored by an earlier attempt of the same request).
    assert set(stored_packets(ports, call_id)) == {0} | stored
    late = asyncio.run(_post_one(live_api, f"/v1/call/stream/{call_id}", 999))
    assert late.status_code == 409
    assert 999 not in stored_packets(ports, call_id)


async def _post_one(base_url: str, path: str, sequence: int) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        return await post_retrying(client, path, packet(sequence))


async def _first_packet(base_url: str, call_id: str) -> httpx.Response:
    return await _post_one(base_url, f"/v1/call/stream/{call_id}", 0)


def test_concurrent_ends_put_exactly_one_work_item_on_the_queue(
    live_api: str, api: httpx.Client, ports: Ports, aws_clients: AwsClients, call_id: str
) -> None:
    queue_url = ports.settings.work_queue_url
    assert asyncio.run(_first_packet(live_api, call_id)).status_code in STORED
    answers = post_concurrently_retrying(live_api, [(f"/v1/call/{call_id}/end", None)] * 10)
    assert answers.unexpected == []
    assert [r.status_code for r in answers.final] == [202] * 10
    assert all(r.json()["state"] == "PROCESSING_AI" for r in answers.final)
    items = [body for body in drain_queue(aws_clients, queue_url) if body["call_id"] == call_id]
    call = read_store(lambda: ports.store.get_call(call_id))
    assert call is not None and call.round == 1
    if FAULTS_ON:
        # A SendMessage whose answer was lost is resent by the SDK: SQS (a standard queue)
        # then holds it twice, as on AWS, and the worker acts once per round. A send that
        # failed outright leaves the round unrecorded, for the sweeper to send.
        assert all(item == {"call_id": call_id, "round": 1} for item in items)
        assert items or call.enqueued_round < call.round
    else:
        assert items == [{"call_id": call_id, "round": 1}]

"""The invariants of DESIGN.md, each under real concurrency: many requests in flight at once
against uvicorn and a moto server, never one after another."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from callcore.bootstrap import Ports
from tests.integration.helpers import drain_queue, packet, post_concurrently, stored_packets


def test_racing_first_packets_of_a_new_call_are_all_stored_and_the_call_exists_once(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str
) -> None:
    responses = post_concurrently(live_api, [(f"/v1/call/stream/{call_id}", packet(s)) for s in range(20)])
    assert [r.status_code for r in responses] == [202] * 20
    assert stored_packets(ports, call_id) == {s: f"audio-{s}" for s in range(20)}
    listed = api.get("/v1/calls", params={"state": "IN_PROGRESS", "limit": 100}).json()["calls"]
    pages = [c["call_id"] for c in listed]
    cursor = api.get("/v1/calls", params={"state": "IN_PROGRESS", "limit": 100}).json()["next_cursor"]
    while cursor:
        page = api.get("/v1/calls", params={"state": "IN_PROGRESS", "limit": 100, "cursor": cursor}).json()
        pages += [c["call_id"] for c in page["calls"]]
        cursor = page["next_cursor"]
    assert pages.count(call_id) == 1


def test_concurrent_distinct_packets_are_all_received(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str
) -> None:
    n = 60
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    responses = post_concurrently(live_api, [(f"/v1/call/stream/{call_id}", packet(s)) for s in range(1, n + 1)])
    assert Counter(r.status_code for r in responses) == {202: n}
    stats = api.get(f"/v1/call/{call_id}").json()["packets"]
    assert stats["received"] == n + 1
    assert stats["missing"] == []
    assert len(stored_packets(ports, call_id)) == n + 1


# Sequence 0 opens a call with another transaction than the other sequences: race both.
@pytest.mark.parametrize("sequence", [0, 7])
def test_the_same_packet_ten_times_at_once_is_stored_once_with_one_202(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str, sequence: int
) -> None:
    responses = post_concurrently(live_api, [(f"/v1/call/stream/{call_id}", packet(sequence))] * 10)
    assert Counter(r.status_code for r in responses) == {202: 1, 200: 9}
    assert sum(r.json()["status"] == "duplicate" for r in responses) == 9
    assert stored_packets(ports, call_id) == {sequence: f"audio-{sequence}"}
    stats = api.get(f"/v1/call/{call_id}").json()["packets"]
    assert (stats["received"], stats["duplicates"]) == (1, 9)


@pytest.mark.parametrize("sequence", [0, 3])
def test_one_sequence_with_different_data_at_once_keeps_exactly_the_accepted_one(
    live_api: str, ports: Ports, call_id: str, sequence: int
) -> None:
    bodies = [packet(sequence, data=f"variant-{i}") for i in range(10)]
    responses = post_concurrently(live_api, [(f"/v1/call/stream/{call_id}", b) for b in bodies])
    assert Counter(r.status_code for r in responses) == {202: 1, 409: 9}
    winner = next(b for b, r in zip(bodies, responses, strict=True) if r.status_code == 202)
    assert stored_packets(ports, call_id) == {sequence: winner["data"]}


def test_packets_racing_the_end_are_either_stored_and_in_the_ai_work_or_refused(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str
) -> None:
    # 8 streams send packets back to back; the end goes out while they are in full flow,
    # as soon as 40 packets have been accepted, so packets are in flight on both sides of it.
    streams, per_stream = 8, 25

    async def race() -> tuple[httpx.Response, list[httpx.Response]]:
        accepted_enough = asyncio.Event()
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=live_api, timeout=60) as client:

            async def stream(first: int) -> None:
                for seq in range(first, first + per_stream):
                    answers.append(await client.post(f"/v1/call/stream/{call_id}", json=packet(seq)))
                    if sum(a.status_code == 202 for a in answers) >= 40:
                        accepted_enough.set()

            async def end() -> httpx.Response:
                await accepted_enough.wait()
                return await client.post(f"/v1/call/{call_id}/end")

            results = await asyncio.gather(end(), *(stream(1 + i * per_stream) for i in range(streams)))
        ended = results[0]
        assert ended is not None
        return ended, answers

    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    end, responses = asyncio.run(race())
    assert end.status_code == 202
    accepted = {r.json()["sequence"] for r in responses if r.status_code == 202}
    refused = [r for r in responses if r.status_code != 202]
    assert len(accepted) >= 40
    assert refused, "the end should have landed while packets were still being sent"
    assert all(r.status_code == 409 and r.json()["error"] == "call_not_in_progress" for r in refused)
    # What the worker reads for the call is exactly packet 0 plus every packet answered 202.
    assert set(stored_packets(ports, call_id)) == {0} | accepted
    late = api.post(f"/v1/call/stream/{call_id}", json=packet(999))
    assert late.status_code == 409
    assert 999 not in stored_packets(ports, call_id)


def test_concurrent_ends_put_exactly_one_work_item_on_the_queue(
    live_api: str, api: httpx.Client, ports: Ports, call_id: str
) -> None:
    queue_url = ports.settings.work_queue_url
    drain_queue(ports, queue_url)
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    responses = post_concurrently(live_api, [(f"/v1/call/{call_id}/end", None)] * 10)
    assert [r.status_code for r in responses] == [202] * 10
    assert all(r.json()["state"] == "PROCESSING_AI" for r in responses)
    items = [body for body in drain_queue(ports, queue_url) if body["call_id"] == call_id]
    assert items == [{"call_id": call_id, "round": 1}]

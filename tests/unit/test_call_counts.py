"""services.count_calls: a count per state, bounded, saying when a state holds more."""

from __future__ import annotations

from callcore import services
from callcore.domain.model import CallState, Packet, transition_rule
from callcore.services import StateCount, new_token
from tests.fakes import InMemoryCallStore

T0 = "2024-01-01T00:00:00.000000Z"


def calls(store: InMemoryCallStore, prefix: str, n: int, *, ended: bool = False) -> None:
    """``n`` calls of one packet, IN_PROGRESS, or PROCESSING_AI if ``ended``."""
    for i in range(n):
        call_id = f"{prefix}-{i}"
        store.add_packet(call_id, Packet(sequence=0, data="x", timestamp=1.0), now=T0, received_at_ns=i)
        if ended:
            rule = transition_rule(call_id, CallState.IN_PROGRESS, CallState.PROCESSING_AI)
            store.transition(call_id, rule, now=T0, token=new_token())


def test_every_state_is_counted_in_order_even_when_empty() -> None:
    store = InMemoryCallStore()
    calls(store, "open", 2)
    calls(store, "ended", 1, ended=True)

    counts = services.count_calls(store)

    assert counts == [
        StateCount(CallState.IN_PROGRESS, 2, more=False),
        StateCount(CallState.PROCESSING_AI, 1, more=False),
        StateCount(CallState.COMPLETED, 0, more=False),
        StateCount(CallState.FAILED, 0, more=False),
        StateCount(CallState.ARCHIVED, 0, more=False),
    ]


def test_a_count_stops_at_up_to_and_says_there_are_more() -> None:
    store = InMemoryCallStore()
    calls(store, "open", 4)

    exactly = services.count_calls(store, up_to=4)[0]
    beyond = services.count_calls(store, up_to=3)[0]

    assert exactly == StateCount(CallState.IN_PROGRESS, 4, more=False)
    assert beyond == StateCount(CallState.IN_PROGRESS, 3, more=True)

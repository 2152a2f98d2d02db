"""Content negotiation of GET .../recording: who gets the presigned URL as JSON."""

from __future__ import annotations

import pytest

from ingest.routes import accepts_json


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json", True),
        ("Application/JSON", True),
        ("application/json, audio/wav;q=0.9", True),
        ("audio/wav, application/json;q=0.5", True),
        ("application/json; q=0.001", True),
        ("application/json;q=0", False),
        ("application/json; q=0.0, */*", False),
        ("application/json;q=nonsense", False),
        ("*/*", False),  # a redirect is what curl and plain clients follow
        ("audio/wav", False),
        ("", False),
        (None, False),
    ],
)
def test_json_is_asked_for_when_named_with_a_weight_above_zero(accept: str | None, expected: bool) -> None:
    assert accepts_json(accept) is expected

"""How long a failed work item waits before SQS delivers it again."""

from __future__ import annotations

import random
from collections.abc import Callable

SQS_MAX_VISIBILITY_S = 43200


def backoff_delay(
    receive_count: int,
    base_s: float,
    cap_s: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> int:
    """Exponential backoff with full jitter, in whole seconds for SQS's visibility timeout.

    The ceiling doubles with each receive (base, 2 x base, 4 x base, ...) up to ``cap_s``;
    the delay is drawn uniformly below it, so that calls failing together (an AI
    outage) do not all come back together.
    """
    exponent = max(receive_count, 1) - 1
    ceiling = min(cap_s, base_s * 2 ** min(exponent, 32), SQS_MAX_VISIBILITY_S)
    return max(0, min(round(uniform(0.0, ceiling)), int(ceiling)))

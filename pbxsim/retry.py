"""How the simulated PBX retries a 503, as the API asks: after Retry-After seconds, a few times.

Only 503 is retried. The API answers 503 (with Retry-After) when DynamoDB or SQS is
throttling or unreachable, and promises that repeating the same request is safe. Any
other answer, and a request that got no answer at all, ends the request: those are
what the run counts as failures, and retrying them would hide them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pbxsim.http import Answer, TransportError

Sleep = Callable[[float], Awaitable[object]]


def parse_retry_after(value: str | None) -> int | None:
    """Retry-After as delay-seconds (a non-negative integer); None when absent or anything else.

    The HTTP-date form is not used by the API, and is treated as unparsable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return int(text)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # retries after the first attempt; 0 never retries
    max_wait_s: float = 5.0  # the longest single wait, whatever Retry-After asks
    fallback_s: float = 0.1  # first wait when Retry-After is absent or unparsable; doubles each retry

    def wait_s(self, retry_after: str | None, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...) after a 503 with ``retry_after``."""
        asked = parse_retry_after(retry_after)
        wait = float(asked) if asked is not None else self.fallback_s * 2 ** min(max(retry, 1) - 1, 32)
        return min(wait, self.max_wait_s)


@dataclass
class Exchange:
    """One logical request: every answer its attempts got, and how it ended."""

    answers: list[Answer] = field(default_factory=list)  # in order; all but the last are retried 503s
    error: str | None = None  # the last attempt got no HTTP answer
    gave_up: bool = False  # the last answer is a 503 and the retries were used up
    waits_s: list[float] = field(default_factory=list)

    @property
    def last(self) -> Answer | None:
        return None if self.error is not None or not self.answers else self.answers[-1]

    @property
    def status(self) -> int | None:
        """The final status; None when the request got no answer."""
        last = self.last
        return None if last is None else last.status

    @property
    def retries(self) -> int:
        """503 answers that were retried."""
        return len(self.waits_s)


async def exchange(send: Callable[[], Awaitable[Answer]], policy: RetryPolicy, sleep: Sleep) -> Exchange:
    """Send, and repeat after each 503 as ``policy`` says, until another answer or the cap."""
    result = Exchange()
    while True:
        try:
            answer = await send()
        except TransportError as exc:
            result.error = str(exc)
            return result
        result.answers.append(answer)
        if answer.status != 503:
            return result
        if result.retries >= policy.max_retries:
            result.gave_up = True
            return result
        wait = policy.wait_s(answer.retry_after, result.retries + 1)
        result.waits_s.append(wait)
        await sleep(wait)

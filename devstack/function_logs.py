"""What each function writes to its log on the local stack, for the cost model.

Lambda sends a function's stdout and stderr to CloudWatch Logs, which bills each byte
ingested. The local stack's functions share one process, so the stack's two streams are
wrapped once (``LogMeter.install``), and each write is counted for the function running
in that context (``in_function``); what the stack itself writes (its startup, the pollers'
own warnings) is counted for none. A line is one log event.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any, TypeVar

T = TypeVar("T")

_running: ContextVar[str | None] = ContextVar("devstack_function", default=None)


@contextmanager
def in_function(name: str) -> Iterator[None]:
    """What is written in this context is ``name``'s log (threads started here inherit it
    only through ``contextvars``: an executor's thread does not, so call ``run_in`` there)."""
    token = _running.set(name)
    try:
        yield
    finally:
        _running.reset(token)


def run_in(name: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` as function ``name``: for a handler run on an executor's thread."""
    with in_function(name):
        return fn(*args)


class LogMeter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: Counter[str] = Counter()
        self._events: Counter[str] = Counter()

    def install(self) -> LogMeter:
        """Wrap sys.stdout and sys.stderr: before any logger or handler takes a reference to them."""
        sys.stdout = _Metered(sys.stdout, self)
        sys.stderr = _Metered(sys.stderr, self)
        return self

    def wrote(self, text: str) -> None:
        name = _running.get()
        if name is None or not text:
            return
        with self._lock:
            self._bytes[name] += len(text.encode("utf-8", "replace"))
            self._events[name] += text.count("\n")

    def stats(self, *, reset: bool = False) -> dict[str, dict[str, int]]:
        """Bytes (newlines included) and events (lines) each function wrote since the last reset."""
        with self._lock:
            stats = {name: {"log_bytes": self._bytes[name], "log_events": self._events[name]} for name in self._bytes}
            if reset:
                self._bytes.clear()
                self._events.clear()
        return stats


class _Metered:
    """A text stream that tells ``meter`` what goes through it, and is otherwise ``stream``."""

    def __init__(self, stream: IO[str], meter: LogMeter) -> None:
        self._stream = stream
        self._meter = meter

    def write(self, text: str) -> int:
        self._meter.wrote(text)
        return self._stream.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

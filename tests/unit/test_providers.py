"""AI_PROVIDER picks the provider; AI_FAILURE_RATE and the latency settings wrap whichever it is."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from callcore.adapters.ai.local import LocalAIProvider
from callcore.adapters.ai.mock import PacketText
from callcore.adapters.ai.unreliable import UnreliableAI
from callcore.bootstrap import build_ai_provider
from callcore.domain.errors import RetryableAIError
from callcore.settings import Settings
from tests.fakes import FakeAIProvider, call_audio

RELIABLE = {"ai_failure_rate": 0.0, "ai_min_latency_s": 0.0, "ai_max_latency_s": 0.0}


@pytest.mark.parametrize(("name", "kind"), [("local", LocalAIProvider), ("mock", PacketText)])
def test_the_provider_is_the_one_named_and_bare_when_nothing_is_simulated(name: str, kind: type) -> None:
    assert isinstance(build_ai_provider(Settings(ai_provider=name, **RELIABLE)), kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "kind"), [("local", LocalAIProvider), ("mock", PacketText)])
def test_by_default_every_provider_is_behind_the_seeds_unreliable_service(name: str, kind: type) -> None:
    provider = build_ai_provider(Settings.from_env({"AI_PROVIDER": name}))

    assert isinstance(provider, UnreliableAI)
    assert isinstance(provider.inner, kind)


def test_a_simulated_failure_never_reaches_the_real_provider() -> None:
    inner = FakeAIProvider()
    provider = UnreliableAI(inner, failure_rate=1.0, min_latency_s=0, max_latency_s=0, seed=1)

    for i in range(20):
        with pytest.raises(RetryableAIError) as excinfo:
            asyncio.run(provider.transcribe(call_audio(f"c{i}", [])))
        assert excinfo.value.status == 503
    assert inner.calls == []


def test_the_failure_rate_is_applied_to_the_real_provider() -> None:
    inner = FakeAIProvider()
    provider = UnreliableAI(inner, failure_rate=0.25, min_latency_s=0, max_latency_s=0, seed=3)

    async def outcomes() -> int:
        failed = 0
        for i in range(400):
            try:
                await provider.transcribe(call_audio(f"c{i}", []))
            except RetryableAIError:
                failed += 1
        return failed

    failed = asyncio.run(outcomes())

    assert 70 <= failed <= 130  # 100 expected; seeded, so the same every run
    assert len(inner.calls) == 400 - failed


@pytest.mark.parametrize("name", ["local", "mock"])
def test_choosing_another_provider_never_imports_the_aws_one_or_the_speech_engines(name: str) -> None:
    code = (
        "import sys; from callcore.bootstrap import build_ai_provider; from callcore.settings import Settings; "
        f"build_ai_provider(Settings.from_env({{'AI_PROVIDER': {name!r}}})); "
        "print(sorted(m for m in ('callcore.adapters.ai.aws', 'pocketsphinx', 'vaderSentiment') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert imported.strip() == "[]"

"""Real speech end to end, as a newcomer meets it: `python -m pbxsim --speech` against
`python -m devstack` (what `make run` starts) with every default of the template, the
offline AI (pocketsphinx + VADER) and its simulated 25% failures included."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.child import ChildStack
from pbxsim.speech import FRAME_S, load_fixtures

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def make_run_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildStack]:
    log_path = tmp_path_factory.mktemp("speech") / "stack.log"
    with log_path.open("w") as log:
        # Only the ports differ from `make run`; the tests' own AI_PROVIDER=mock is not passed on.
        stack = ChildStack({"AI_PROVIDER": "", "RECORDING_DOWNLOAD": ""}, log)
        try:
            yield stack
        finally:
            stack.stop()


def test_speech_through_make_run_defaults_completes_with_words_and_a_recording_as_long_as_the_audio(
    make_run_stack: ChildStack, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    calls = len(load_fixtures())  # one call per fixture

    run = subprocess.run(
        [sys.executable, "-m", "pbxsim", "--base-url", make_run_stack.url, "--speech", "--fast", "--calls", str(calls),
         "--timeout", "240", "--quiet", "--json", str(report_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    speech = report["speech"]
    assert speech["calls"] == speech["calls_with_transcript"] == calls
    # pocketsphinx on espeak-ng voices at 8 kHz: about a quarter of the words come back.
    assert speech["mean_wer"] < 1.0
    with httpx.Client(base_url=make_run_stack.url, timeout=30) as api:
        for row in speech["by_call"]:
            call = api.get(f"/v1/call/{row['call_id']}").json()
            assert call["state"] == "COMPLETED", call
            assert call["ai"]["transcript"], call
            assert call["ai"]["sentiment"]["label"] in {"POSITIVE", "NEGATIVE", "NEUTRAL"}
            # The recording is every frame sent: the audio, its last frame padded to 20 ms.
            frames = -(-round(row["audio_s"] * 8000) // 160)
            assert call["recording"]["duration_s"] == pytest.approx(frames * FRAME_S, abs=1e-3)
            wav = api.get(f"/v1/call/{row['call_id']}/recording")
            assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
            assert len(wav.content) == call["recording"]["bytes"] == 44 + frames * 160 * 2

"""AI_PROVIDER=aws against a real moto server over HTTP: Transcribe jobs on the stored
recording, the transcript read back from S3, Comprehend sentiment over chunks, and how
failures are classified.

What moto 5.2.5 does (moto/transcribe/models.py, moto/comprehend/models.py), and what
the tests do about it:

- StartTranscriptionJob creates a job without a status; every GetTranscriptionJob moves
  it one step on: QUEUED, IN_PROGRESS, then COMPLETED. ListTranscriptionJobs moves
  nothing, so the tests look with it. A second start of a taken name: ConflictException.
- On COMPLETED moto only sets ``TranscriptFileUri``: it writes no transcript. The tests
  put the JSON Transcribe would write, where it would write it.
- moto never fails a job: FAILED is tested on GetTranscriptionJob-shaped answers.
- DetectSentiment always answers NEUTRAL with the same scores, and refuses
  ``len(text) > 5000`` counted in characters, where AWS counts bytes: a chunk of
  multibyte text can be far over AWS's limit and pass moto. The tests record each chunk
  sent and check its size in bytes themselves.
- Throttling and 5xx come from the project's fault injector (devstack/faults.py) in a
  second moto server started with LOCAL_FAULTS; the 400 is moto's own
  BadRequestException, for a job that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, NoRegionError, ParamValidationError, ReadTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st

from callcore.adapters.ai.aws import (
    COMPREHEND_MAX_BYTES,
    MAX_CHECK_DELAY_S,
    MAX_TRANSCRIPTION_WAIT_S,
    AwsAIProvider,
    aggregate_sentiment,
    check_delay_s,
    chunk_text,
    classify_aws_error,
    comprehend_language,
    job_name,
    raise_unless_completed,
    transcript_key,
    waited_s,
)
from callcore.adapters.s3_recordings import S3RecordingStore
from callcore.bootstrap import build_ai_clients, build_ai_provider, build_clients
from callcore.domain.audio import CallAudio, DecodedAudio, to_wav
from callcore.domain.errors import PermanentAIError, RetryableAIError, TranscriptionPendingError
from callcore.domain.model import Recording, Sentiment
from callcore.settings import Settings
from devstack.moto_process import MotoProcess, free_port

RATE = 8000


def _moto(local_faults: str | None = None) -> MotoProcess:
    """A moto server child process, with LOCAL_FAULTS as given (never the caller's own)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("LOCAL_FAULTS_SEED", raising=False)
        if local_faults is None:
            env.delenv("LOCAL_FAULTS", raising=False)
        else:
            env.setenv("LOCAL_FAULTS", local_faults)
        return MotoProcess("127.0.0.1", free_port()).start()


@dataclass
class Aws:
    endpoint: str
    bucket: str
    s3: Any
    transcribe: Any
    comprehend: Any

    def provider(self, *, comprehend: Any = None, transcribe: Any = None) -> AwsAIProvider:
        return AwsAIProvider(
            self.bucket, transcribe or self.transcribe, comprehend or self.comprehend, self.s3, language_code="en-US"
        )

    def recorded_call(self, call_id: str, seconds: float = 2.0, round: int = 1) -> CallAudio:
        """A call whose recording (a mono 16-bit WAV) is stored as the worker stores it."""
        samples = int(seconds * RATE)
        decoded = DecodedAudio(pcm16=bytes(2 * samples), sample_rate=RATE, duration_s=samples / RATE)
        recording = S3RecordingStore(self.s3, self.bucket).save(call_id, to_wav(decoded), duration_s=decoded.duration_s)
        return CallAudio(call_id=call_id, round=round, attempt=1, recording=recording, audio=decoded)

    def jobs(self, name: str) -> list[dict[str, Any]]:
        """The jobs of that name, as ListTranscriptionJobs shows them (which moves no job on)."""
        summaries = self.transcribe.list_transcription_jobs(JobNameContains=name)["TranscriptionJobSummaries"]
        return [s for s in summaries if s["TranscriptionJobName"] == name]

    def put_transcript(self, audio: CallAudio, text: str) -> None:
        """What Transcribe writes at OutputBucketName/OutputKey when a job completes (moto writes nothing)."""
        document = {
            "jobName": job_name(self.bucket, audio.call_id, audio.round),
            "accountId": "123456789012",
            "status": "COMPLETED",
            "results": {"transcripts": [{"transcript": text}], "items": []},
        }
        self.s3.put_object(Bucket=self.bucket, Key=transcript_key(audio), Body=json.dumps(document).encode())


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    moto = _moto()
    try:
        # The clients bootstrap builds for the worker, pointed at this server explicitly.
        clients, ai = build_clients(endpoint_url=moto.endpoint), build_ai_clients(endpoint_url=moto.endpoint)
        bucket = f"callcore-ai-{uuid.uuid4().hex[:12]}"
        clients.s3.create_bucket(Bucket=bucket)
        yield Aws(moto.endpoint, bucket, clients.s3, ai.transcribe, ai.comprehend)
    finally:
        moto.stop()


def _call_id() -> str:
    return f"call-{uuid.uuid4().hex[:10]}"


def _later(audio: CallAudio, check: int) -> CallAudio:
    """The delayed check ``check`` of ``audio``'s job, as the worker builds it: no decoded audio."""
    return CallAudio(
        call_id=audio.call_id, round=audio.round, attempt=audio.attempt, recording=audio.recording, check=check
    )


# ---------------------------------------------------------------------------------------
# (1) The first attempt starts the job; a redelivered attempt does not start another


def test_the_first_attempt_starts_the_job_and_a_redelivery_goes_on_with_it(aws: Aws) -> None:
    call_id = f"pbx-7:leg:{uuid.uuid4().hex[:6]}"  # ':' is not allowed in a job name
    audio = aws.recorded_call(call_id, seconds=2.0)
    provider = aws.provider()
    name = job_name(aws.bucket, call_id, 1)

    with pytest.raises(TranscriptionPendingError) as first:
        asyncio.run(provider.transcribe(audio))
    assert first.value.check_after_s == 15  # max(15 s, a quarter of 2 s)
    assert [job["TranscriptionJobStatus"] for job in aws.jobs(name)] == ["QUEUED"]

    # The same work item delivered again (its check message was sent, but its deletion
    # failed): the start meets the job's name taken, and goes on with that job.
    with pytest.raises(TranscriptionPendingError) as again:
        asyncio.run(provider.transcribe(audio))
    assert again.value.check_after_s == 15
    assert [job["TranscriptionJobStatus"] for job in aws.jobs(name)] == ["IN_PROGRESS"]  # one job, moved on

    job = aws.transcribe.get_transcription_job(TranscriptionJobName=name)["TranscriptionJob"]
    assert job["Media"] == {"MediaFileUri": f"s3://{aws.bucket}/calls/{call_id}/recording.wav"}
    assert (job["MediaFormat"], job["LanguageCode"]) == ("wav", "en-US")


# ---------------------------------------------------------------------------------------
# (2) Later checks reach COMPLETED and read the transcript from S3


def test_checks_follow_the_job_to_completed_and_read_the_transcript_beside_the_recording(aws: Aws) -> None:
    call_id = _call_id()
    audio = aws.recorded_call(call_id, seconds=100.0)
    provider = aws.provider()

    with pytest.raises(TranscriptionPendingError) as queued:
        asyncio.run(provider.transcribe(audio))  # started, QUEUED
    with pytest.raises(TranscriptionPendingError) as running:
        asyncio.run(provider.transcribe(_later(audio, 1)))  # IN_PROGRESS
    # A quarter of the call's 100 s, then twice that.
    assert (queued.value.check_after_s, running.value.check_after_s) == (25, 50)

    # Only now, as Transcribe writes it on completion (moto writes none).
    aws.put_transcript(audio, "thank you for calling how can I help")
    transcript = asyncio.run(provider.transcribe(_later(audio, 2)))
    assert transcript == "thank you for calling how can I help"

    # The job wrote (would write) its output where the provider read it: moto's URI shows
    # the OutputBucketName and OutputKey the job was started with.
    job = aws.transcribe.get_transcription_job(TranscriptionJobName=job_name(aws.bucket, call_id, 1))
    uri = job["TranscriptionJob"]["Transcript"]["TranscriptFileUri"]
    assert uri.endswith(f"/{aws.bucket}/calls/{call_id}/transcribe-round-1.json")


def test_a_completed_job_without_its_transcript_is_a_permanent_error(aws: Aws) -> None:
    audio = aws.recorded_call(_call_id())
    provider = aws.provider()
    for check in (0, 1):
        with pytest.raises(TranscriptionPendingError):
            asyncio.run(provider.transcribe(_later(audio, check) if check else audio))
    with pytest.raises(PermanentAIError, match="completed but wrote no transcript at s3://"):
        asyncio.run(provider.transcribe(_later(audio, 2)))


def test_each_round_has_its_own_job_and_transcript(aws: Aws) -> None:
    call_id = _call_id()
    first, second = aws.recorded_call(call_id, round=1), aws.recorded_call(call_id, round=2)
    provider = aws.provider()
    for audio in (first, second):
        with pytest.raises(TranscriptionPendingError):
            asyncio.run(provider.transcribe(audio))
    names = [job_name(aws.bucket, call_id, r) for r in (1, 2)]
    assert names[0] != names[1]
    assert all(len(aws.jobs(name)) == 1 for name in names)
    assert transcript_key(first) != transcript_key(second)


# ---------------------------------------------------------------------------------------
# (3) Job states: FAILED, still running, unknown (moto never fails a job)


def _job(status: str, **extra: Any) -> dict[str, Any]:
    return {"TranscriptionJobName": "callcore-c1-0123456789ab-r1", "TranscriptionJobStatus": status, **extra}


def test_a_failed_job_is_a_permanent_error_with_transcribes_reason() -> None:
    reason = "The media format that you specified doesn't match the detected media format."
    with pytest.raises(PermanentAIError, match="callcore-c1-0123456789ab-r1 failed: The media format"):
        raise_unless_completed(_job("FAILED", FailureReason=reason), duration_s=30, check=2)
    with pytest.raises(PermanentAIError, match="no reason given"):
        raise_unless_completed(_job("FAILED"), duration_s=30, check=2)
    raise_unless_completed(_job("COMPLETED"), duration_s=30, check=2)  # returns: read the transcript


def test_the_provider_fails_a_call_whose_job_failed(aws: Aws) -> None:
    class FailedJob:
        """GetTranscriptionJob as AWS answers it for a failed job (moto never fails one)."""

        def get_transcription_job(self, TranscriptionJobName: str) -> dict[str, Any]:
            return {"TranscriptionJob": _job("FAILED", FailureReason="Invalid sample rate for audio file.")}

    audio = aws.recorded_call(_call_id())
    with pytest.raises(PermanentAIError, match="Invalid sample rate for audio file"):
        asyncio.run(aws.provider(transcribe=FailedJob()).transcribe(_later(audio, 3)))


def test_a_running_job_is_checked_later_until_the_checks_have_waited_their_limit() -> None:
    assert check_delay_s(0.0, 0) == 15
    assert check_delay_s(600.0, 0) == 150  # a quarter of a 10-minute call
    delays = [check_delay_s(600.0, check) for check in range(8)]
    assert delays == [150, 300, 600, 900, 900, 900, 900, 900]  # doubling, capped at SQS's 900 s
    with pytest.raises(TranscriptionPendingError) as pending:
        raise_unless_completed(_job("IN_PROGRESS"), duration_s=600.0, check=2)
    assert pending.value.check_after_s == 600

    # The first check whose earlier checks have waited the limit gives up, retryably.
    give_up = next(check for check in range(100) if waited_s(600.0, check) >= MAX_TRANSCRIPTION_WAIT_S)
    assert MAX_TRANSCRIPTION_WAIT_S <= waited_s(600.0, give_up) < MAX_TRANSCRIPTION_WAIT_S + MAX_CHECK_DELAY_S
    with pytest.raises(TranscriptionPendingError):
        raise_unless_completed(_job("QUEUED"), duration_s=600.0, check=give_up - 1)
    with pytest.raises(RetryableAIError, match="gave up waiting"):
        raise_unless_completed(_job("QUEUED"), duration_s=600.0, check=give_up)
    assert waited_s(600.0, 10**9) >= MAX_TRANSCRIPTION_WAIT_S  # a nonsense check number is no long loop
    with pytest.raises(RetryableAIError, match="unknown status 'PAUSED'"):
        raise_unless_completed(_job("PAUSED"), duration_s=600.0, check=0)


# ---------------------------------------------------------------------------------------
# Job names


_CALL_IDS = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)


@given(call_id=_CALL_IDS, round_=st.integers(min_value=1, max_value=10**9))
@settings(max_examples=300, deadline=None)
def test_a_job_name_is_valid_for_transcribe_and_the_same_every_time(call_id: str, round_: int) -> None:
    name = job_name("callcore-recordings", call_id, round_)
    assert len(name) <= 200
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert name == job_name("callcore-recordings", call_id, round_)


@given(ids=st.lists(_CALL_IDS, min_size=2, max_size=2, unique=True))
@settings(max_examples=300, deadline=None)
def test_different_calls_get_different_job_names(ids: list[str]) -> None:
    a, b = ids
    assert job_name("bucket", a, 1) != job_name("bucket", b, 1)


def test_colons_and_stacks_never_share_a_job() -> None:
    # ':' is written as '-': the hash of the exact id keeps these apart.
    assert len({job_name("bucket", i, 1) for i in ("a:b", "a-b", "a_b", "a.b")}) == 4
    assert job_name("stack-a-recordings", "c1", 1) != job_name("stack-b-recordings", "c1", 1)
    assert job_name("bucket", "c1", 1) != job_name("bucket", "c1", 2)


# ---------------------------------------------------------------------------------------
# (4) Sentiment: chunks of at most 5,000 bytes, scores weighted by size


_TEXT = st.text(
    # 1 to 4 UTF-8 bytes a character (the skin-tone modifier too), and Unicode whitespace.
    alphabet=[*"abc xyz\t\n", "é", "ß", "日", "本", "😀", "👍", "\U0001f3fd", "\u00a0", "\u2028"],
    max_size=400,
)


@given(text=_TEXT, max_bytes=st.integers(min_value=4, max_value=48))
@settings(max_examples=500, deadline=None)
def test_chunks_keep_every_character_in_order_within_the_byte_limit(text: str, max_bytes: int) -> None:
    chunks = chunk_text(text, max_bytes)
    for chunk in chunks:
        assert 0 < len(chunk.encode()) <= max_bytes
        assert chunk == chunk.strip()
    # Nothing lost, reordered or split: the text's characters outside whitespace, in order.
    assert "".join("".join(chunks).split()) == "".join(text.split())
    words = text.split()
    if all(len(w.encode()) <= max_bytes for w in words):
        # Whole words, one space apart, packed: a chunk ends only where the next word would not fit.
        assert " ".join(chunks).split() == words
        assert all(chunk == " ".join(chunk.split()) for chunk in chunks)
        for this, following in pairwise(chunks):
            assert len(this.encode()) + 1 + len(following.split()[0].encode()) > max_bytes


def test_a_word_over_the_limit_is_cut_between_characters() -> None:
    word = "é" * 3001  # 6,002 bytes
    chunks = chunk_text(f"hi {word} there")
    assert chunks[0] == "hi"
    assert "".join(chunks[1:-1]) == word
    assert [len(c.encode()) for c in chunks[1:-1]] == [5000, 1002]
    assert chunks[-1] == "there"
    with pytest.raises(ValueError, match="at least 4"):
        chunk_text("x", 3)


class RecordingComprehend:
    """A real Comprehend client that notes every DetectSentiment request and answer."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.texts: list[str] = []
        self.answers: list[dict[str, Any]] = []
        self.languages: set[str] = set()

    def detect_sentiment(self, Text: str, LanguageCode: str) -> dict[str, Any]:
        self.texts.append(Text)
        self.languages.add(LanguageCode)
        answer: dict[str, Any] = self._client.detect_sentiment(Text=Text, LanguageCode=LanguageCode)
        self.answers.append(answer)
        return answer


def test_a_long_multibyte_transcript_is_scored_in_chunks_of_at_most_5000_bytes(aws: Aws) -> None:
    words = ["naïve", "日本語", "façade", "😀", "Grüße", "straße", "thanks", "refund", "ok"]
    transcript = " ".join(words[i % len(words)] for i in range(6000)) + " " + "ü" * 2600  # one 5,200-byte word
    assert len(transcript.encode()) > 8 * COMPREHEND_MAX_BYTES
    comprehend = RecordingComprehend(aws.comprehend)

    sentiment = asyncio.run(aws.provider(comprehend=comprehend).score_sentiment(transcript))

    sizes = [len(text.encode()) for text in comprehend.texts]
    assert max(sizes) <= COMPREHEND_MAX_BYTES  # AWS's limit, in bytes (moto counts characters)
    assert max(sizes) > COMPREHEND_MAX_BYTES - 20  # packed, not a word a request
    assert max(len(text) for text in comprehend.texts) < COMPREHEND_MAX_BYTES  # what moto checks passes anyway
    assert " ".join(comprehend.texts).split()[:-2] == transcript.split()[:-1]  # the words, in order
    assert "".join(comprehend.texts[-2:]) == "ü" * 2600  # the long word, cut between characters
    assert comprehend.languages == {"en"}  # Comprehend's code for en-US
    # The answers, weighted by the chunks' bytes (moto's are all the same NEUTRAL).
    expected = aggregate_sentiment(zip(sizes, (a["SentimentScore"] for a in comprehend.answers), strict=True))
    assert sentiment == expected
    assert sentiment.label == "NEUTRAL"
    assert -1.0 <= sentiment.score <= 1.0


def test_scores_are_weighted_by_bytes_and_mixed_reads_as_neutral() -> None:
    happy = {"Positive": 0.9, "Negative": 0.02, "Neutral": 0.08, "Mixed": 0.0}
    angry = {"Positive": 0.1, "Negative": 0.7, "Neutral": 0.1, "Mixed": 0.1}
    # 1,000 happy bytes and 3,000 angry ones: Positive 0.3, Negative 0.53 -> NEGATIVE, -0.23.
    assert aggregate_sentiment([(1000, happy), (3000, angry)]) == Sentiment("NEGATIVE", -0.23)
    assert aggregate_sentiment([(3000, happy), (1000, angry)]) == Sentiment("POSITIVE", 0.51)
    mixed = {"Positive": 0.3, "Negative": 0.1, "Neutral": 0.05, "Mixed": 0.55}
    # Comprehend's MIXED: markedly both; the stored labels are three, and the score keeps the lean.
    assert aggregate_sentiment([(10, mixed)]) == Sentiment("NEUTRAL", 0.2)
    assert aggregate_sentiment([]) == Sentiment("NEUTRAL", 0.0)
    extreme = aggregate_sentiment([(5, {"Positive": 1.0, "Negative": 0.0, "Neutral": 0.0, "Mixed": 0.0})])
    assert extreme == Sentiment("POSITIVE", 1.0)


class NoComprehend:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Comprehend was called ({name}) for a blank transcript")


@pytest.mark.parametrize("transcript", ["", "   ", "\n\t \u2028"])
def test_a_blank_transcript_is_neutral_without_asking_comprehend(aws: Aws, transcript: str) -> None:
    sentiment = asyncio.run(aws.provider(comprehend=NoComprehend()).score_sentiment(transcript))
    assert sentiment == Sentiment("NEUTRAL", 0.0)


def test_comprehend_gets_its_own_language_code() -> None:
    assert comprehend_language("en-US") == "en"
    assert comprehend_language("zh-TW") == "zh-TW"
    assert comprehend_language("pt-BR") == "pt"
    with pytest.raises(ValueError, match="cy-GB"):
        comprehend_language("cy-GB")


# ---------------------------------------------------------------------------------------
# (5) Classification: throttling and 5xx retry, a refused request does not


def test_a_check_of_a_job_that_does_not_exist_is_moto_s_400_and_permanent(aws: Aws) -> None:
    audio = aws.recorded_call(_call_id())
    with pytest.raises(PermanentAIError, match="Transcribe GetTranscriptionJob: BadRequestException") as caught:
        asyncio.run(aws.provider().transcribe(_later(audio, 1)))  # no attempt ever started its job
    assert not isinstance(caught.value, RetryableAIError)
    cause = caught.value.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_text_over_comprehend_s_limit_is_permanent(aws: Aws) -> None:
    # What a chunk over the limit would get: moto's real TextSizeLimitExceededException.
    with pytest.raises(ClientError) as caught:
        aws.comprehend.detect_sentiment(Text="x" * (COMPREHEND_MAX_BYTES + 1), LanguageCode="en")
    error = classify_aws_error(caught.value, "Comprehend DetectSentiment")
    assert isinstance(error, PermanentAIError)
    assert "TextSizeLimitExceededException" in str(error)


_ONE_TRY = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1, read_timeout=5)


def _one_try_client(service: str, endpoint: str) -> Any:
    """A client that does not retry: each call sees the one answer the server gave."""
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", config=_ONE_TRY)


@dataclass
class Faulty:
    endpoint: str
    outcome: str
    status: int


@pytest.fixture(
    scope="module",
    params=[("ThrottlingException", 400), ("InternalServerError", 500), ("ServiceUnavailable", 503)],
    ids=lambda p: p[0],
)
def faulty(request: pytest.FixtureRequest) -> Iterator[Faulty]:
    outcome, status = request.param
    moto = _moto(f"transcribe.*=1:{outcome},comprehend.*=1:{outcome}")
    try:
        yield Faulty(moto.endpoint, outcome, status)
    finally:
        moto.stop()


def test_throttling_and_5xx_are_retryable_with_their_status(faulty: Faulty) -> None:
    provider = AwsAIProvider(
        "callcore-recordings",
        _one_try_client("transcribe", faulty.endpoint),
        _one_try_client("comprehend", faulty.endpoint),
        _one_try_client("s3", faulty.endpoint),
    )
    recording = Recording(key="calls/c1/recording.wav", duration_s=30.0, bytes=480_044)
    start = CallAudio(call_id="c1", round=1, attempt=1, recording=recording)
    for audio, action in ((start, "StartTranscriptionJob"), (_later(start, 4), "GetTranscriptionJob")):
        with pytest.raises(RetryableAIError, match=f"Transcribe {action}") as transcribing:
            asyncio.run(provider.transcribe(audio))
        assert transcribing.value.status == faulty.status
    with pytest.raises(RetryableAIError, match="Comprehend DetectSentiment") as scoring:
        asyncio.run(provider.score_sentiment("thanks, that fixed it"))
    assert scoring.value.status == faulty.status

    with urllib.request.urlopen(f"{faulty.endpoint}/_local_faults", timeout=5) as answer:  # noqa: S310
        counters = json.load(answer)
    assert counters["by_outcome"] == {faulty.outcome: 3}  # the injector's answers, not moto's


def test_a_connection_failure_is_retryable_without_a_status() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    provider = AwsAIProvider(
        "callcore-recordings",
        _one_try_client("transcribe", nowhere),
        _one_try_client("comprehend", nowhere),
        _one_try_client("s3", nowhere),
    )
    with pytest.raises(RetryableAIError, match="EndpointConnectionError") as caught:
        asyncio.run(provider.score_sentiment("hello"))
    assert caught.value.status is None


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Op")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (_client_error("LimitExceededException", 400), True),  # Transcribe's throttling
        (_client_error("TooManyRequestsException", 400), True),  # Comprehend's
        (_client_error("ThrottlingException", 400), True),
        (_client_error("InternalFailureException", 500), True),
        (_client_error("", 502), True),
        (_client_error("SlowDown", 503), True),
        (_client_error("Whatever", 429), True),
        (ReadTimeoutError(endpoint_url="https://transcribe.us-east-1.amazonaws.com/"), True),
        (_client_error("BadRequestException", 400), False),
        (_client_error("TextSizeLimitExceededException", 400), False),
        (_client_error("UnsupportedLanguageException", 400), False),
        (_client_error("AccessDeniedException", 400), False),
        (ParamValidationError(report="TranscriptionJobName is missing"), False),  # our bug: the same every time
        (NoRegionError(), False),  # misconfigured: no retry can help until it is fixed
    ],
)
def test_one_classifier_decides_what_retries(error: Exception, retryable: bool) -> None:
    classified = classify_aws_error(error, "Op")
    assert isinstance(classified, RetryableAIError if retryable else PermanentAIError)
    assert isinstance(classified, RetryableAIError) == retryable


# ---------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_builds_the_aws_provider_when_chosen() -> None:
    settings = Settings(
        ai_provider="aws", recordings_bucket="callcore-recordings", ai_failure_rate=0.0, ai_max_latency_s=0.0
    )
    assert isinstance(build_ai_provider(settings), AwsAIProvider)

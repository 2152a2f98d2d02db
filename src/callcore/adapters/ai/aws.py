"""AI_PROVIDER=aws: Amazon Transcribe batch jobs transcribe, Amazon Comprehend scores sentiment.

**The SDK.** This provider uses the project's own boto3 clients and runs each blocking
call through ``asyncio.to_thread``, as ``process_call`` does for the recording store. It
does not use aioboto3:

- aioboto3 (through aiobotocore) pins botocore to a narrow range and always lags it: the
  newest aioboto3 (15.5.0) needs botocore < 1.40.62 and the newest aiobotocore (3.10.0)
  botocore < 1.43.118, while the project pins boto3/botocore 1.44.8. A second SDK would
  hold boto3 back, for every function, for the sake of one provider.
- Threads are what the worker already uses for every other blocking call (the store, the
  recordings). An attempt here makes a handful of requests (a start, a status, a read,
  a DetectSentiment per 5,000 bytes), each waiting on the network: asyncio's thread pool
  runs them side by side with the batch's other records as it runs the store's calls.
- No extra import at a cold start (aioboto3 alone took 0.36 s), and one client stack,
  retry policy and endpoint handling (AWS_ENDPOINT_URL) for every adapter.

**Transcription** is an Amazon Transcribe batch job on the stored recording
(``s3://{bucket}/{recording.key}``, mono 16-bit PCM WAV). A job runs for minutes, longer
than is worth holding a worker for, so the work is split across work items:

- the attempt (``audio.check == 0``) starts the job, under a name fixed by the bucket, the
  call and the round (``job_name``), so a redelivered attempt finds its job already there
  (ConflictException) and goes on with it instead of starting a second one;
- it then asks for the job's status, and while the job is QUEUED or IN_PROGRESS raises
  TranscriptionPendingError: the worker sends a delayed check message (``check`` 1, 2...);
- a check only asks for the status. COMPLETED: the transcript is read from the JSON the
  job wrote beside the recording (``transcript_key``). FAILED: PermanentAIError with
  Transcribe's FailureReason.

The checks back off (``check_delay_s``): the first comes after max(15 s, a quarter of the
call's duration), each later one after twice the previous delay, at most 900 s (SQS's
DelaySeconds limit). After MAX_TRANSCRIPTION_WAIT_S (4 h) of checks a still-running job
is a RetryableAIError instead, so a stuck job ends in the worker's retries and dead-letter
queue, well before the sweeper's ``processing_timeout_s`` (8 h by default) would resend
the round.

**Sentiment** is Comprehend's DetectSentiment, whose Text is limited to 5,000 bytes of
UTF-8: a transcript is cut at word boundaries into chunks of at most that (``chunk_text``),
each is scored, and the scores are averaged weighted by each chunk's size in bytes.

**Errors** go through one classifier (``classify_aws_error``): throttling, 5xx, timeouts
and connection failures are RetryableAIError; a request AWS refuses (BadRequestException,
unsupported media, text over the limit...) is PermanentAIError.

Locally (``AWS_ENDPOINT_URL`` pointing at moto) moto runs the jobs' states but writes no
transcript file, so a local call fails with "wrote no transcript"; tests put the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from callcore.adapters.aws_errors import RETRYABLE_CODES, error_code
from callcore.domain.audio import CallAudio
from callcore.domain.errors import AIError, PermanentAIError, RetryableAIError, TranscriptionPendingError
from callcore.domain.model import Sentiment

__all__ = [
    "COMPREHEND_MAX_BYTES",
    "MAX_CHECK_DELAY_S",
    "MAX_TRANSCRIPTION_WAIT_S",
    "RETRYABLE_AI_CODES",
    "AwsAIProvider",
    "aggregate_sentiment",
    "check_delay_s",
    "chunk_text",
    "classify_aws_error",
    "comprehend_language",
    "job_name",
    "raise_unless_completed",
    "transcript_key",
    "waited_s",
]

# DetectSentiment's Text is "a UTF-8 text string. The maximum string size is 5 KB", counted
# in bytes: over it, TextSizeLimitExceededException
# (https://docs.aws.amazon.com/comprehend/latest/APIReference/API_DetectSentiment.html).
COMPREHEND_MAX_BYTES = 5000
# One UTF-8 character takes up to 4 bytes: a smaller chunk could not always hold one.
_MIN_CHUNK_BYTES = 4

# The check schedule. The first check comes no sooner than FIRST_CHECK_MIN_S (a job spends
# seconds QUEUED even for a short call) or a quarter of the call's duration (a batch job
# typically takes a fraction of the audio's length); each later delay doubles, capped at
# SQS's largest DelaySeconds.
FIRST_CHECK_MIN_S = 15
MAX_CHECK_DELAY_S = 900
# How long checks wait for one job before it counts as failed (retryable). Transcribe's
# batch jobs take audio up to 4 h long and usually finish well within its duration; 4 h
# of checks is ~20 check messages, and stays under half of Settings.processing_timeout_s
# (8 h), after which the sweeper would consider the round's work item lost.
MAX_TRANSCRIPTION_WAIT_S = 4 * 3600

# Error codes that mean "try again later", on top of those every adapter shares:
# Transcribe answers LimitExceededException when too many requests or jobs run, Comprehend
# TooManyRequestsException; their own 5xx exceptions are named differently again.
RETRYABLE_AI_CODES = RETRYABLE_CODES | {
    "LimitExceededException",
    "TooManyRequestsException",
    "InternalFailureException",
    "InternalServerException",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
}

# DetectSentiment's LanguageCode values (its API reference, and botocore's model).
_COMPREHEND_LANGUAGES = frozenset({"en", "es", "fr", "de", "it", "pt", "ar", "hi", "ja", "ko", "zh", "zh-TW"})

# The labels this service stores (as the other providers do), for Comprehend's four.
_LABELS = (("Positive", "POSITIVE"), ("Negative", "NEGATIVE"), ("Neutral", "NEUTRAL"), ("Mixed", "MIXED"))


def job_name(bucket: str, call_id: str, round: int) -> str:
    """The Transcribe job of one round of one call: the same name every time it is asked for.

    Job names are unique per account and region (and kept for 90 days), and allow only
    ``[0-9a-zA-Z._-]``, at most 200 characters. A call id (1 to 128 of ``A-Za-z0-9._:-``)
    is kept readable with ':' written as '-'; the hash of the bucket and the exact call id
    that follows keeps "a:b" and "a-b" apart, and two stacks (buckets) in one account
    from ever sharing a job.
    """
    digest = hashlib.sha256(f"{bucket}/{call_id}".encode()).hexdigest()[:12]
    return f"callcore-{call_id.replace(':', '-')}-{digest}-r{round}"


def transcript_key(audio: CallAudio) -> str:
    """Where the job writes its transcript: beside the call's recording, one file per round.

    An OutputKey ending in ".json" is the transcript's whole key (StartTranscriptionJob's
    OutputKey: https://docs.aws.amazon.com/transcribe/latest/APIReference/API_StartTranscriptionJob.html).
    """
    folder = posixpath.dirname(audio.recording.key)
    name = f"transcribe-round-{audio.round}.json"
    return f"{folder}/{name}" if folder else name


def check_delay_s(duration_s: float, check: int) -> int:
    """Seconds to wait after check ``check`` (0: the attempt that started the job) found the job running."""
    first = max(FIRST_CHECK_MIN_S, duration_s / 4)
    # min(check, 16): 15 s doubled 16 times is far past the cap, and no float overflows.
    return min(MAX_CHECK_DELAY_S, math.ceil(first * 2 ** min(max(check, 0), 16)))


def waited_s(duration_s: float, check: int) -> int:
    """How long the checks before check ``check`` waited in all (the sum of their delays)."""
    total = 0
    for earlier in range(max(check, 0)):
        total += check_delay_s(duration_s, earlier)
        if total >= MAX_TRANSCRIPTION_WAIT_S:
            break  # past the limit; a nonsense check number costs no long loop
    return total


def raise_unless_completed(job: Mapping[str, Any], *, duration_s: float, check: int) -> None:
    """Return if a GetTranscriptionJob ``TranscriptionJob`` is COMPLETED; otherwise raise what its status means.

    QUEUED or IN_PROGRESS: TranscriptionPendingError with the next check's delay, or
    RetryableAIError once the checks have waited MAX_TRANSCRIPTION_WAIT_S. FAILED:
    PermanentAIError with Transcribe's FailureReason (the same audio fails again). Any
    other status (one this code does not know): RetryableAIError.
    """
    name = job.get("TranscriptionJobName", "?")
    status = job.get("TranscriptionJobStatus")
    if status == "COMPLETED":
        return
    if status == "FAILED":
        reason = job.get("FailureReason") or "no reason given"
        raise PermanentAIError(f"Transcribe job {name} failed: {reason}")
    if status in ("QUEUED", "IN_PROGRESS"):
        waited = waited_s(duration_s, check)
        if waited >= MAX_TRANSCRIPTION_WAIT_S:
            raise RetryableAIError(
                f"Transcribe job {name} is still {status} after {check} checks over {waited} s; "
                f"gave up waiting (limit {MAX_TRANSCRIPTION_WAIT_S} s)"
            )
        raise TranscriptionPendingError(
            f"Transcribe job {name} is {status} (check {check})", check_delay_s(duration_s, check)
        )
    raise RetryableAIError(f"Transcribe job {name} has an unknown status {status!r}")


def chunk_text(text: str, max_bytes: int = COMPREHEND_MAX_BYTES) -> list[str]:
    """``text`` as chunks of at most ``max_bytes`` bytes of UTF-8, cut at whitespace.

    The words (runs of non-whitespace) come out in order, one space between words of a
    chunk; blank text gives no chunk. A word longer than ``max_bytes`` is cut between
    characters (never inside one's UTF-8 bytes) into chunks of its own.
    """
    if max_bytes < _MIN_CHUNK_BYTES:
        raise ValueError(f"max_bytes must be at least {_MIN_CHUNK_BYTES} (one UTF-8 character), not {max_bytes}")
    chunks: list[str] = []
    words: list[str] = []
    size = 0
    for word in text.split():
        length = len(word.encode())
        if length > max_bytes:
            if words:
                chunks.append(" ".join(words))
                words, size = [], 0
            chunks.extend(_cut_word(word, max_bytes))
            continue
        if words and size + 1 + length > max_bytes:
            chunks.append(" ".join(words))
            words, size = [], 0
        size += length + (1 if words else 0)
        words.append(word)
    if words:
        chunks.append(" ".join(words))
    return chunks


def _cut_word(word: str, max_bytes: int) -> Iterable[str]:
    start, size = 0, 0
    for index, char in enumerate(word):
        length = len(char.encode())
        if size + length > max_bytes:
            yield word[start:index]
            start, size = index, 0
        size += length
    yield word[start:]


def aggregate_sentiment(scored: Iterable[tuple[int, Mapping[str, float]]]) -> Sentiment:
    """One sentiment for chunks scored by Comprehend: (chunk's bytes, its SentimentScore).

    Each of Positive, Negative, Neutral and Mixed is averaged weighted by the chunks'
    sizes, so a long chunk counts for more than a short tail. The label is the highest
    average; MIXED reads as NEUTRAL, because the service (and every provider) labels a
    call POSITIVE, NEGATIVE or NEUTRAL, and a call that is markedly both leans neither
    way: its score still tells how far it leans. The score is the weighted Positive minus
    the weighted Negative, in [-1, 1], rounded to 2 places. No chunks: NEUTRAL, 0.0.
    """
    totals = dict.fromkeys((key for key, _ in _LABELS), 0.0)
    weight = 0
    for size, scores in scored:
        weight += size
        for key in totals:
            totals[key] += size * float(scores.get(key, 0.0))
    if weight <= 0:
        return Sentiment(label="NEUTRAL", score=0.0)
    means = {key: total / weight for key, total in totals.items()}
    # max keeps the first of equal values: the order of _LABELS breaks ties.
    label = max(_LABELS, key=lambda pair: means[pair[0]])[1]
    if label == "MIXED":
        label = "NEUTRAL"
    score = round(max(-1.0, min(1.0, means["Positive"] - means["Negative"])), 2) + 0.0  # + 0.0: never -0.0
    return Sentiment(label=label, score=score)


def comprehend_language(language_code: str) -> str:
    """Comprehend's code for a Transcribe language ("en-US" -> "en"). ValueError if Comprehend has none."""
    if language_code in _COMPREHEND_LANGUAGES:
        return language_code
    primary = language_code.split("-", 1)[0]
    if primary in _COMPREHEND_LANGUAGES:
        return primary
    raise ValueError(f"Comprehend cannot score sentiment in {language_code!r}")


def classify_aws_error(exc: Exception, action: str) -> AIError:
    """The AI error an SDK failure of ``action`` ("Transcribe GetTranscriptionJob") is.

    RetryableAIError (with the HTTP status, when there was an answer): throttling codes,
    any 5xx (and 429), and botocore's timeouts and connection failures. PermanentAIError:
    everything else AWS refuses (a 4xx such as BadRequestException, an unsupported media
    format, TextSizeLimitExceededException), a request botocore finds malformed, and
    missing credentials or region: the same request fails the same way again.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = exc.response.get("Error", {}).get("Message") or ""
        text = f"{action}: {code or f'HTTP {status}'}" + (f": {message}" if message else "")
        if code in RETRYABLE_AI_CODES or (isinstance(status, int) and (status >= 500 or status == 429)):
            return RetryableAIError(text, status=status)
        return PermanentAIError(text)
    if isinstance(exc, ParamValidationError | NoCredentialsError | PartialCredentialsError | NoRegionError):
        return PermanentAIError(f"{action}: {type(exc).__name__}: {exc}")
    if isinstance(exc, BotoCoreError):
        return RetryableAIError(f"{action}: {type(exc).__name__}: {exc}")
    raise TypeError(f"not an AWS SDK error: {exc!r}") from exc


def _aws(action: str, client: Any, method: str, **kwargs: Any) -> Any:
    """One SDK call, its failures as AI errors."""
    try:
        # The method is looked up here: a LazyClient makes its client on first use, which
        # fails (no region, no credentials...) as a BotoCoreError too.
        return getattr(client, method)(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise classify_aws_error(exc, action) from exc


class AwsAIProvider:
    """AIProvider on Amazon Transcribe (batch jobs on the stored recording) and Comprehend.

    ``transcribe``, ``comprehend`` and ``s3`` are boto3 clients (or bootstrap's LazyClients
    of them); ``bucket`` holds the recordings, and receives the jobs' transcripts.
    ``language_code`` is Transcribe's ("en-US"); Comprehend gets its own code for it.
    """

    reads_recording = True  # a job's media is the recording in S3

    def __init__(self, bucket: str, transcribe: Any, comprehend: Any, s3: Any, *, language_code: str = "en-US") -> None:
        self._bucket = bucket
        self._transcribe = transcribe
        self._comprehend = comprehend
        self._s3 = s3
        self._language_code = language_code
        # Refused at start-up, not on every call's sentiment.
        self._comprehend_language = comprehend_language(language_code)

    async def transcribe(self, audio: CallAudio) -> str:
        return await asyncio.to_thread(self._transcribe_now, audio)

    async def score_sentiment(self, transcript: str) -> Sentiment:
        chunks = chunk_text(transcript)
        if not chunks:
            return Sentiment(label="NEUTRAL", score=0.0)  # nothing said: nothing to ask Comprehend
        return await asyncio.to_thread(self._score_now, chunks)

    def _transcribe_now(self, audio: CallAudio) -> str:
        name = job_name(self._bucket, audio.call_id, audio.round)
        key = transcript_key(audio)
        if audio.check == 0:
            self._start(name, audio, key)
        answer = _aws(
            "Transcribe GetTranscriptionJob", self._transcribe, "get_transcription_job", TranscriptionJobName=name
        )
        raise_unless_completed(answer["TranscriptionJob"], duration_s=audio.recording.duration_s, check=audio.check)
        return self._read_transcript(name, key)

    def _start(self, name: str, audio: CallAudio, key: str) -> None:
        try:
            self._transcribe.start_transcription_job(
                TranscriptionJobName=name,
                LanguageCode=self._language_code,
                MediaFormat="wav",  # the sample rate is read from the WAV header
                Media={"MediaFileUri": f"s3://{self._bucket}/{audio.recording.key}"},
                OutputBucketName=self._bucket,
                OutputKey=key,
            )
        except ClientError as exc:
            if error_code(exc) == "ConflictException":
                return  # the job of this round exists: an earlier delivery of this attempt started it
            raise classify_aws_error(exc, "Transcribe StartTranscriptionJob") from exc
        except BotoCoreError as exc:
            # A start whose answer was lost may have started the job: the next delivery
            # meets it as a ConflictException, and goes on with it.
            raise classify_aws_error(exc, "Transcribe StartTranscriptionJob") from exc

    def _read_transcript(self, name: str, key: str) -> str:
        location = f"s3://{self._bucket}/{key}"
        try:
            body: bytes = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if error_code(exc) in {"NoSuchKey", "404"}:
                raise PermanentAIError(
                    f"Transcribe job {name} completed but wrote no transcript at {location}"
                ) from exc
            raise classify_aws_error(exc, "S3 GetObject (transcript)") from exc
        except BotoCoreError as exc:  # also a body cut off while being read
            raise classify_aws_error(exc, "S3 GetObject (transcript)") from exc
        # Transcribe's output: {"results": {"transcripts": [{"transcript": "..."}], "items": [...]}, ...}
        # (https://docs.aws.amazon.com/transcribe/latest/dg/how-input.html#how-output).
        try:
            transcripts = json.loads(body)["results"]["transcripts"]
            texts = [entry["transcript"] for entry in transcripts]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentAIError(f"{location} is not a Transcribe transcript: {exc!r}") from exc
        if not all(isinstance(text, str) for text in texts):
            raise PermanentAIError(f"{location} is not a Transcribe transcript: a transcript is not text")
        # One entry in practice; joining keeps every word if a job ever writes more.
        return " ".join(text for text in texts if text)

    def _score_now(self, chunks: list[str]) -> Sentiment:
        # One chunk after another: a transcript is a few chunks, and Comprehend's
        # DetectSentiment rate quota is shared by every worker of the account.
        scored = []
        for chunk in chunks:
            answer = _aws(
                "Comprehend DetectSentiment",
                self._comprehend,
                "detect_sentiment",
                Text=chunk,
                LanguageCode=self._comprehend_language,
            )
            scored.append((len(chunk.encode()), answer["SentimentScore"]))
        return aggregate_sentiment(scored)

"""The operator console (/console), served by the app and used in a real browser.

The browser tests drive headless Chromium from Debian's packages through Debian's
chromedriver (the same Chromium build), with Selenium (requirements-dev.txt). `make test`
installs both packages (the Makefile's `browser` target); a missing browser fails these
tests, it does not skip them. The stack is real: the app on uvicorn with API_KEYS set,
a moto server of its own, and the AI worker and DLQ handler fed by the local stack's
pollers, with the mock provider (the packets' text is the transcript) never failing.

Every wait is an explicit condition with a deadline (WebDriverWait), never a sleep. Each
browser test saves a screenshot in tests/output/ (git-ignored); docs/console.png, in the
README, is a copy of tests/output/console-call.png.
"""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
from mangum import Mangum
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from ai_worker import dlq
from ai_worker.handler import WorkerDeps, build_handler
from callcore.adapters.ai.mock import MockAIProvider
from callcore.bootstrap import Ports, build_clients, build_ports
from callcore.clock import now_iso
from callcore.domain.audio import mulaw_encode_sample
from callcore.domain.model import CallState, transition_rule
from callcore.services import COUNT_UP_TO, new_token
from devstack.poller import build_pollers
from devstack.template import load_template
from ingest import console
from tests.conftest import LiveServer, MotoStack, start_moto_stack
from tests.integration.helpers import RunningStack, b64, packet
from tests.integration.test_lambda_handler import LAMBDA_CONTEXT, api_event

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
API_KEY = "console-test-key"
OUTPUT = Path(__file__).resolve().parents[1] / "output"
# Generous for a loaded 2-core machine; the page polls every 1.5 s and the mock AI takes 20 ms.
WAIT_S = 30
WORDS = ("thanks", "great", "service")

T = TypeVar("T")


# --- the stack and the browser --------------------------------------------------------------


@dataclass
class Console:
    url: str
    ports: Ports
    api: httpx.Client  # the API with the key, as the PBX and scripts use it

    def counts(self) -> dict[str, int]:
        response = self.api.get("/v1/calls/counts")
        assert response.status_code == 200, response.text
        return {c["state"]: c["count"] for c in response.json()["counts"]}


@pytest.fixture(scope="module")
def console_stack() -> Iterator[MotoStack]:
    # A moto server of its own: the worker here must not take other tests' work items.
    ms = start_moto_stack()
    try:
        yield ms
    finally:
        ms.moto.stop()


@pytest.fixture(scope="module")
def console_app(console_stack: MotoStack) -> Iterator[Console]:
    """The app with API_KEYS set, on uvicorn, and the worker and DLQ handler behind it."""
    settings = console_stack.settings(API_KEYS=API_KEY, RETRY_BASE_DELAY_S=0, RETRY_MAX_DELAY_S=0)
    clients = build_clients(endpoint_url=console_stack.moto.endpoint)
    ports = build_ports(settings, clients)
    ai = MockAIProvider(0.0, 0.02, 0.02, seed=7)
    deps = WorkerDeps(settings=settings, store=ports.store, ai=ai, queue=ports.queue, recordings=ports.recordings)
    handlers = {"AiWorkerFunction": build_handler(deps), "DlqHandlerFunction": dlq.build_handler(ports.store)}
    pollers = build_pollers(load_template(), console_stack.stack, clients.sqs, handlers)
    from ingest.app import create_app

    with (
        LiveServer(create_app(ports)) as server,
        httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": API_KEY}) as api,
        RunningStack(pollers),
    ):
        yield Console(url=server.url, ports=ports, api=api)


def chromium(width: int = 1440, height: int = 1100) -> Chrome:
    """Debian's headless Chromium through Debian's chromedriver: paths given, so Selenium
    Manager never looks for (or downloads) a driver or a browser of its own."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: `make test` installs Debian's chromium and chromium-driver (make browser)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium's sandbox refuses to run as root, which CI and these machines are.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture
def browser() -> Iterator[Chrome]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


# --- waiting on the page -----------------------------------------------------------------------


def wait(driver: Chrome, condition: Callable[[Chrome], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout_s``.

    An element replaced by the page's next refresh (stale) or not yet there is "not yet".
    """

    def check(d: Chrome) -> T | Literal[False]:
        try:
            value = condition(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        return False if value is None else value

    result: T = WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(check, message=f"waited for {what}")
    return result


def text(driver: Chrome, css: str) -> str:
    value: str = driver.find_element(By.CSS_SELECTOR, css).text
    return value


def shows(css: str, expected: str) -> Callable[[Chrome], bool]:
    return lambda d: text(d, css) == expected


def visible(element_id: str) -> Callable[[Chrome], WebElement | None]:
    def check(d: Chrome) -> WebElement | None:
        element = d.find_element(By.ID, element_id)
        return element if element.is_displayed() else None

    return check


def hidden(element_id: str) -> Callable[[Chrome], bool]:
    return lambda d: not d.find_element(By.ID, element_id).is_displayed()


def row(call_id: str) -> Callable[[Chrome], WebElement]:
    return lambda d: d.find_element(By.CSS_SELECTOR, f'#calls tr[data-call-id="{call_id}"]')


def listed_ids(driver: Chrome) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#calls tr")
    return [str(r.get_attribute("data-call-id")) for r in rows]


def count_shown(driver: Chrome, state: str) -> str:
    return text(driver, f'#counts a[data-state="{state}"] .count')


def enter_key(driver: Chrome, key: str) -> None:
    field = wait(driver, visible("key-input"), "the page to ask for the API key")
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()


def mark_page(driver: Chrome) -> None:
    """A mark in the page's JavaScript state: still there later means the page never reloaded."""
    driver.execute_script("window.consoleTestMark = 'not reloaded'")


def still_marked(driver: Chrome) -> bool:
    return bool(driver.execute_script("return window.consoleTestMark === 'not reloaded'"))


def screenshot(driver: Chrome, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    assert driver.save_screenshot(str(path)), path
    return path


def severe_console_errors(driver: Chrome) -> list[dict[str, Any]]:
    """Script errors and refused loads (a CSP violation, an asset 404) in the page's console."""
    logs: list[dict[str, Any]] = driver.get_log("browser")
    # A 401 is how the page learns that a key is needed; it is not a fault of the page.
    return [e for e in logs if e["level"] == "SEVERE" and "401 (Unauthorized)" not in e["message"]]


# --- calls made directly in the store --------------------------------------------------------


def finished_call(console_app: Console, call_id: str, state: CallState, **outcome: Any) -> None:
    """A call of three packets of text, moved in the store to ``state`` as the worker would move it
    (``outcome``: its failure_reason or result), with no work item queued."""
    for seq, word in enumerate(WORDS):
        assert console_app.api.post(f"/v1/call/stream/{call_id}", json=packet(seq, data=b64(word))).status_code == 202
    for source, target, extra in (
        (CallState.IN_PROGRESS, CallState.PROCESSING_AI, {}),
        (CallState.PROCESSING_AI, state, outcome),
    ):
        rule = transition_rule(call_id, source, target)
        console_app.ports.store.transition(call_id, rule, now=now_iso(), token=new_token(), **extra)


def failed_call(console_app: Console, call_id: str) -> None:
    finished_call(console_app, call_id, CallState.FAILED, failure_reason="AI processing gave up (made by the test)")


# --- in the browser ------------------------------------------------------------------------------


def tone_packets(first_sequence: int, count: int) -> list[dict[str, Any]]:
    """``count`` 20 ms G.711 mu-law packets of a 440 Hz tone: audio the recording holds, and
    that the mock AI notes by its size."""
    samples = [round(8000 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(160 * count)]
    mulaw = bytes(mulaw_encode_sample(s) for s in samples)
    return [
        packet(first_sequence + i, data=base64.b64encode(mulaw[160 * i : 160 * (i + 1)]).decode()) for i in range(count)
    ]


def stream_call(console_app: Console, call_id: str, *, end: bool) -> None:
    """Three packets of words, then a second of tone in one batch; ended if ``end``."""
    for seq, word in enumerate(WORDS):
        assert console_app.api.post(f"/v1/call/stream/{call_id}", json=packet(seq, data=b64(word))).status_code == 202
    batch = console_app.api.post(f"/v1/call/stream/{call_id}/batch", json={"packets": tone_packets(len(WORDS), 50)})
    assert batch.status_code == 200, batch.text
    if end:
        assert console_app.api.post(f"/v1/call/{call_id}/end").status_code == 202


def test_a_streamed_call_is_watched_to_completed_and_its_transcript_read(console_app: Console, browser: Chrome) -> None:
    # Call ids as a PBX names them: this test's picture is the README's (docs/console.png).
    earlier = [f"pbx1-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    call_id = f"pbx1-{uuid.uuid4().hex[:10]}"
    for cid in earlier:
        stream_call(console_app, cid, end=True)
    browser.get(f"{console_app.url}/console#state=IN_PROGRESS")
    enter_key(browser, API_KEY)
    wait(browser, hidden("key-form"), "the key form to close")
    wait(browser, lambda d: count_shown(d, "IN_PROGRESS").isdigit(), "the counts")
    mark_page(browser)

    # The PBX streams a call: it appears in the IN_PROGRESS listing the page shows.
    stream_call(console_app, call_id, end=False)
    wait(browser, row(call_id), f"{call_id} listed IN_PROGRESS").find_element(By.TAG_NAME, "a").click()
    wait(browser, shows("#call-state", "IN_PROGRESS"), "the call's page")
    wait(browser, shows('#packets dd[data-stat="received"]', "53"), "53 packets received")
    assert text(browser, "#transcript") == "(none yet)"

    # It ends: the worker transcribes it, and the page follows it to COMPLETED.
    assert console_app.api.post(f"/v1/call/{call_id}/end").status_code == 202
    wait(browser, shows("#call-state", "COMPLETED"), "the call to reach COMPLETED on the page")
    wait(browser, shows("#transcript", "thanks great service [8000 bytes of audio]"), "the transcript")
    assert text(browser, "#sentiment").startswith("Sentiment: POSITIVE")
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempts tr")
    assert [[td.text for td in a.find_elements(By.TAG_NAME, "td")][:2] for a in attempts] == [["1", "1"]]
    assert "AI attempt 1 (round 1) started" in text(browser, "#timeline")
    assert text(browser, '#packets dd[data-stat="duplicates"]') == "0"
    assert text(browser, '#packets dd[data-stat="missing"]') == "0"
    assert browser.find_element(By.ID, "archive").is_displayed()
    assert not browser.find_element(By.ID, "retry").is_displayed()

    # The recording plays from the WAV fetched with the key: the player reads its length.
    recording = console_app.api.get(f"/v1/call/{call_id}").json()["recording"]
    duration = wait(
        browser,
        lambda d: d.execute_script(
            "const p = document.getElementById('player');"
            "return p.src.startsWith('blob:') && p.readyState >= 1 ? p.duration : null"
        ),
        "the recording to load in the player",
    )
    assert duration == pytest.approx(recording["duration_s"], abs=0.01)

    # The counts follow, and the COMPLETED listing holds the call.
    completed = str(console_app.counts()["COMPLETED"])
    wait(browser, lambda d: count_shown(d, "COMPLETED") == completed, f"COMPLETED counted {completed}")
    browser.find_element(By.CSS_SELECTOR, '#counts a[data-state="COMPLETED"]').click()
    wait(
        browser,
        lambda d: listed_ids(d)[:1] == [call_id] and set(listed_ids(d)[1:3]) == set(earlier),
        "the latest COMPLETED first, then the two before it",
    )
    assert row(call_id)(browser).find_element(By.CLASS_NAME, "state").text == "COMPLETED"
    assert wait(browser, lambda d: "selected" in str(row(call_id)(d).get_attribute("class")), "the row selected")

    assert still_marked(browser), "the page reloaded"
    assert severe_console_errors(browser) == []
    screenshot(browser, "console-call.png")

    # Archived from its button, with the answer shown.
    browser.find_element(By.ID, "archive").click()
    wait(browser, shows("#action-answer", "Archive: 200, now ARCHIVED"), "the archive's answer")
    wait(browser, shows("#call-state", "ARCHIVED"), "the call to show ARCHIVED")
    assert not browser.find_element(By.ID, "archive").is_displayed()
    assert console_app.api.get(f"/v1/call/{call_id}").json()["state"] == "ARCHIVED"


@pytest.fixture
def aws_console(console_app: Console) -> Iterator[str]:
    """The app as deployed on AWS (RECORDING_DOWNLOAD=redirect), on the same stack: its URL."""
    from ingest.app import create_app

    settings = replace(console_app.ports.settings, recording_download="redirect")
    with LiveServer(create_app(replace(console_app.ports, settings=settings))) as server:
        yield server.url


def test_on_aws_the_player_plays_the_presigned_url_the_api_answers_as_json(
    console_app: Console, console_stack: MotoStack, aws_console: str, browser: Chrome, call_id: str
) -> None:
    # On AWS the API's recording is a 307 to S3, which a fetch with the key cannot follow
    # (S3's CORS preflight refuses X-API-Key): the page asks for the URL as JSON and plays it.
    stream_call(console_app, call_id, end=True)
    browser.get(f"{aws_console}/console#state=COMPLETED&call={call_id}")
    enter_key(browser, API_KEY)
    wait(browser, shows("#call-state", "COMPLETED"), "the call to reach COMPLETED on the page")

    recording = console_app.api.get(f"/v1/call/{call_id}").json()["recording"]
    src, duration = wait(
        browser,
        lambda d: d.execute_script(
            "const p = document.getElementById('player');return p.readyState >= 1 ? [p.currentSrc, p.duration] : null"
        ),
        "the recording to load in the player from S3",
    )
    assert src.startswith(f"{console_stack.moto.endpoint}/") and f"calls/{call_id}/recording.wav" in src
    assert "X-Amz-Signature=" in src
    assert duration == pytest.approx(recording["duration_s"], abs=0.01)
    # The page may play media from the bucket's origin, and only from there and blob:.
    policy = httpx.get(f"{aws_console}/console").headers["content-security-policy"]
    assert policy == console.content_security_policy(console_stack.moto.endpoint)
    assert "media-src blob: http://127.0.0.1:" in policy
    assert severe_console_errors(browser) == []


def test_a_failed_call_is_retried_from_its_button_after_a_refused_key(
    console_app: Console, browser: Chrome, call_id: str
) -> None:
    failed_call(console_app, call_id)
    browser.get(f"{console_app.url}/console#state=FAILED&call={call_id}")

    enter_key(browser, "not-the-key")
    wait(browser, shows("#key-error", "That key was refused."), "the refusal")
    assert text(browser, "#call-state") == ""  # nothing was shown without the key
    enter_key(browser, API_KEY)
    wait(browser, shows("#call-state", "FAILED"), "the FAILED call")
    assert text(browser, "#call-failure") == "AI processing gave up (made by the test)"
    assert browser.find_element(By.ID, "archive").is_displayed()
    wait(browser, row(call_id), f"{call_id} listed FAILED")
    mark_page(browser)

    retry = wait(browser, visible("retry"), "the Retry button")
    retry.click()
    wait(browser, shows("#action-answer", "Retry: 202, now PROCESSING_AI"), "the retry's answer")
    wait(browser, shows("#call-state", "COMPLETED"), "the retried call to complete")
    wait(browser, shows("#transcript", "thanks great service"), "the transcript")
    assert not browser.find_element(By.ID, "retry").is_displayed()
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempts tr")
    assert [[td.text for td in a.find_elements(By.TAG_NAME, "td")][:2] for a in attempts] == [["2", "1"]]
    # It left the FAILED listing without a reload.
    wait(browser, lambda d: call_id not in listed_ids(d), f"{call_id} gone from the FAILED listing")
    assert still_marked(browser)
    assert severe_console_errors(browser) == []
    screenshot(browser, "console-retry.png")


def test_an_unknown_call_opened_by_id_shows_the_api_answer(console_app: Console, browser: Chrome) -> None:
    browser.get(f"{console_app.url}/console")
    enter_key(browser, API_KEY)
    wait(browser, hidden("key-form"), "the key form to close")
    browser.find_element(By.ID, "open-input").send_keys("no-such-call")
    browser.find_element(By.CSS_SELECTOR, "#open-form button").click()
    wait(browser, lambda d: text(d, "#call-failure").startswith("404 call_not_found:"), "the 404 answer")
    assert text(browser, "#call-id") == "no-such-call"
    assert not browser.find_element(By.ID, "retry").is_displayed()
    assert "call=no-such-call" in browser.current_url  # a link to it shows it again


def test_the_listing_pages_most_recent_first(console_app: Console, browser: Chrome, call_id: str) -> None:
    ids = [f"{call_id}-{i:02d}" for i in range(12)]
    for cid in ids:
        failed_call(console_app, cid)
    newest_first = list(reversed(ids))
    browser.get(f"{console_app.url}/console#state=FAILED&limit=10")
    enter_key(browser, API_KEY)

    wait(browser, lambda d: listed_ids(d) == newest_first[:10], "the first page")
    assert text(browser, "#page-number") == "page 1"
    assert not browser.find_element(By.ID, "newer").is_enabled()
    failed = str(console_app.counts()["FAILED"])
    wait(browser, lambda d: count_shown(d, "FAILED") == failed, f"FAILED counted {failed}")

    browser.find_element(By.ID, "older").click()
    wait(browser, lambda d: listed_ids(d)[:2] == newest_first[10:], "the second page")
    assert text(browser, "#page-number") == "page 2"
    browser.find_element(By.ID, "newer").click()
    wait(browser, lambda d: listed_ids(d) == newest_first[:10], "the first page again")

    # A 13th call: the page shows it on top without a reload.
    mark_page(browser)
    failed_call(console_app, f"{call_id}-12")
    wait(browser, lambda d: listed_ids(d)[:2] == [f"{call_id}-12", ids[-1]], "the new call on top")
    assert still_marked(browser)
    assert severe_console_errors(browser) == []


def test_without_api_keys_the_console_asks_for_none(live_api: str, browser: Chrome) -> None:
    browser.get(f"{live_api}/console")
    wait(browser, lambda d: count_shown(d, "IN_PROGRESS").isdigit(), "the counts")
    assert not browser.find_element(By.ID, "key-form").is_displayed()
    assert severe_console_errors(browser) == []


# --- over HTTP -----------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_without_a_key_and_load_nothing_from_outside(
    console_app: Console,
) -> None:
    with httpx.Client(base_url=console_app.url, timeout=30) as anonymous:
        assert anonymous.get("/v1/calls/counts").status_code == 401
        page = anonymous.get("/console")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == console.content_security_policy()
        assert page.headers["cache-control"] == "no-cache"
        assert 'src="console/console.js"' in page.text
        assert 'href="console/console.css"' in page.text
        for url, kind in (("/console/console.js", "text/javascript"), ("/console/console.css", "text/css")):
            asset = anonymous.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].startswith(kind), url
            again = anonymous.get(url, headers={"If-None-Match": asset.headers["etag"]})
            assert again.status_code == 304
        assert anonymous.head("/console").status_code == 200
        assert anonymous.post("/console").status_code == 405
        for url in ("/console/__init__.py", "/console/index.html", "/console/../app.py"):
            assert anonymous.get(url).status_code == 404, url
        assert anonymous.get("/console/", follow_redirects=True).url.path == "/console"
    folder = Path(console.__file__).parent
    for name in ("index.html", "console.js", "console.css"):
        content = (folder / name).read_text()
        for outside in ("http://", "https://", 'src="//', 'href="//', "url(", "@import"):
            assert outside not in content, (name, outside)


@pytest.mark.usefixtures("lambda_loop")
def test_through_the_lambda_handler_the_page_and_its_assets_are_served_as_text(console_app: Console) -> None:
    from ingest.app import create_app

    handler = Mangum(create_app(console_app.ports), lifespan="off")
    page = handler(api_event("GET", "/console"), LAMBDA_CONTEXT)
    assert page["statusCode"] == 200
    assert page["headers"]["content-security-policy"] == console.content_security_policy()
    folder = Path(console.__file__).parent
    for url, name in (
        ("/console", "index.html"),
        ("/console/console.js", "console.js"),
        ("/console/console.css", "console.css"),
    ):
        served = handler(api_event("GET", url), LAMBDA_CONTEXT)
        assert (served["statusCode"], served["isBase64Encoded"]) == (200, False), url
        assert served["body"] == (folder / name).read_text(), url


def test_importing_the_app_reads_no_console_file() -> None:
    """The Lambda cold start stays as it was: the files are read on the first request only."""
    folder = Path(console.__file__).parent
    probe = (
        "import json, sys\n"
        "opened = []\n"
        "def hook(event, args):\n"
        "    path = str(args[0]) if event == 'open' else ''\n"
        f"    if path.startswith({str(folder)!r}) and not path.endswith(('.py', '.pyc')):\n"
        "        opened.append(path)\n"
        "sys.addaudithook(hook)\n"
        "import ingest.app\n"
        "print(json.dumps(opened))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == []


def test_counts_cover_every_state_and_say_when_a_count_stops(console_app: Console, call_id: str) -> None:
    before = console_app.counts()
    assert list(before) == [s.value for s in CallState]
    failed_call(console_app, call_id)
    assert console_app.counts() == {**before, "FAILED": before["FAILED"] + 1}
    body = console_app.api.get("/v1/calls/counts").json()
    assert all(c["more"] is False for c in body["counts"])
    assert all(0 <= c["count"] <= COUNT_UP_TO for c in body["counts"])

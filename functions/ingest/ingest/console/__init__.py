"""The operator console: one page at /console, with its script and styles, served by the app.

The page is a static shell (no call data, no secret in it), so like /docs it is served
without an API key. Everything it shows comes from the /v1 API, called by its script,
which sends ``X-API-Key`` on every call: when the API answers 401 (API_KEYS is set) the
page asks the operator for the key and keeps it in the tab's sessionStorage, not in the
URL (where it would land in history, proxy logs and API Gateway's access log). On AWS the
app's check is the only one (the HTTP API passes every request through), so it is the same.

Nothing is read at import: every Lambda cold start imports this module, and only an
operator opening the console needs the files. Each file is read on its first request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

if TYPE_CHECKING:
    from callcore.bootstrap import Ports

CONSOLE_URL = "/console"

# Each URL the app serves, and its file in this folder: a fixed list, so that no other file
# (this module's source included) can be asked for.
PAGES = {CONSOLE_URL: "index.html"}
ASSETS = {f"{CONSOLE_URL}/console.js": "console.js", f"{CONSOLE_URL}/console.css": "console.css"}


# The page may load only its own script and styles and call only its own origin: no CDN can
# be added by mistake, and a transcript or call id shown on it can never run as script.
# media-src is where the recording plays from: blob: when the app serves the WAV (fetched
# with the key, played from memory), and the bucket's origin when it hands out presigned
# URLs (RECORDING_DOWNLOAD=redirect, on AWS), which the player loads directly.
def content_security_policy(media_origin: str | None = None) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            f"media-src blob: {media_origin}" if media_origin else "media-src blob:",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


_HEADERS = {
    # Revalidate every time (StaticFiles answers 304 to an unchanged file): a new deployment's
    # page and script are seen together, never a new page with an old script.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def _static_files() -> StaticFiles:
    """This folder, as StaticFiles serves it (ETag and Last-Modified, 304, HEAD), made on first use."""
    return StaticFiles(directory=Path(__file__).parent)


def _page_policy(app: FastAPI) -> str:
    """The page's policy for this app's recordings, worked out on the first page served."""
    policy: str | None = getattr(app.state, "console_policy", None)
    if policy is None:
        ports: Ports = app.state.ports
        redirect = ports.settings.recording_download == "redirect"
        policy = content_security_policy(ports.recordings.download_origin() if redirect else None)
        app.state.console_policy = policy
    return policy


def _endpoint(file: str, *, page: bool) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        response = await _static_files().get_response(file, request.scope)
        response.headers.update(_HEADERS)
        if page:
            response.headers["Content-Security-Policy"] = _page_policy(request.app)
        return response

    return serve


def install(app: FastAPI) -> None:
    """Add /console and its assets: GET and HEAD, no API key, nothing in the OpenAPI document."""
    for url, file in PAGES.items():
        app.add_route(url, _endpoint(file, page=True), methods=["GET"], include_in_schema=False)
    for url, file in ASSETS.items():
        app.add_route(url, _endpoint(file, page=False), methods=["GET"], include_in_schema=False)

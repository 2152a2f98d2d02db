"""Swagger UI at /docs and ReDoc at /redoc, with their scripts, styles and icons served by the app.

FastAPI's own pages load them from a public CDN, so offline (a laptop running `make run`
on a plane, a closed network) both pages stay blank. The files come from the pinned
``fastapi-standalone-docs`` package (Swagger UI 5.33.1, ReDoc 2.5.4, FastAPI's favicon),
which is in the Lambda layer's requirements too. Only its files are used: its code
patches FastAPI's module globals, for every app in the process.

The pages are built as FastAPI's are (same HTML, same ``root_path`` handling), through the
functions FastAPI documents for self-hosting them; only the asset URLs differ. Like
FastAPI's, the routes are public (no API key) and stay out of the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_PACKAGE = "fastapi_standalone_docs"

SWAGGER_JS_URL = f"{DOCS_URL}/swagger-ui-bundle.js"
SWAGGER_CSS_URL = f"{DOCS_URL}/swagger-ui.css"
FAVICON_URL = f"{DOCS_URL}/favicon.png"
REDOC_JS_URL = f"{REDOC_URL}/redoc.standalone.js"
# The package's redoc.standalone.js asks for its "API docs by Redocly" logo at the page's
# own path + "/logo-mini.svg" (upstream's points at Redocly's CDN): so under /redoc.
REDOC_LOGO_URL = f"{REDOC_URL}/logo-mini.svg"

# Each URL the app serves, and its file in the package's static/ folder: a fixed list, so
# that no other file of the package (or path outside it) can be asked for.
ASSETS = {
    SWAGGER_JS_URL: "swagger/swagger-ui-bundle.js",
    SWAGGER_CSS_URL: "swagger/swagger-ui.css",
    FAVICON_URL: "fastapi/favicon.png",
    REDOC_JS_URL: "redoc/redoc.standalone.js",
    REDOC_LOGO_URL: "redoc/logo-mini.svg",
}


@cache
def _static_files() -> StaticFiles:
    """The package's static/ folder, found on the first asset request.

    Not at import: every Lambda cold start imports this module, and only a person reading
    the docs needs the files. StaticFiles finds the package without importing it, and
    answers conditional requests with 304 (ETag, Last-Modified) and HEAD.
    """
    return StaticFiles(packages=[(ASSETS_PACKAGE, "static")])


def _asset_endpoint(file: str) -> Callable[[Request], Awaitable[Response]]:
    async def asset(request: Request) -> Response:
        return await _static_files().get_response(file, request.scope)

    return asset


def install(app: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect, /redoc and their assets to an app made with
    ``docs_url=None, redoc_url=None`` (which leaves FastAPI's CDN pages out)."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the app with docs_url=None and redoc_url=None: these routes replace FastAPI's")
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    if openapi_url is None:
        raise ValueError("the docs pages need the app's OpenAPI document (openapi_url)")

    def root(request: Request) -> str:
        # As FastAPI's own pages: behind a proxy that strips a prefix, every URL keeps it.
        root_path: str = request.scope.get("root_path", "")
        return root_path.rstrip("/")

    async def swagger_ui_html(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_swagger_ui_html(
            openapi_url=prefix + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=prefix + SWAGGER_JS_URL,
            swagger_css_url=prefix + SWAGGER_CSS_URL,
            swagger_favicon_url=prefix + FAVICON_URL,
            oauth2_redirect_url=prefix + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc_html(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_redoc_html(
            openapi_url=prefix + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=prefix + REDOC_JS_URL,
            redoc_favicon_url=prefix + FAVICON_URL,
            with_google_fonts=False,  # a stylesheet from Google's servers; ReDoc falls back to system fonts
        )

    # Starlette routes (GET and HEAD), as FastAPI adds its own docs pages: no dependencies,
    # so no API key, and nothing in the OpenAPI document.
    app.add_route(DOCS_URL, swagger_ui_html, include_in_schema=False)
    if oauth2_redirect_url:
        app.add_route(oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc_html, include_in_schema=False)
    for url, file in ASSETS.items():
        app.add_route(url, _asset_endpoint(file), include_in_schema=False)

"""/docs and /redoc load nothing from outside the app, so they work with no network.

Over real HTTP (uvicorn) and through the Lambda handler (Mangum): every script,
stylesheet and icon the pages name is the app's own, and the app serves it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest
from mangum import Mangum

from callcore.bootstrap import Ports
from tests.conftest import LiveServer
from tests.integration.test_lambda_handler import LAMBDA_CONTEXT, api_event

PAGES = ("/docs", "/redoc")

# What each kind of asset must be served as, and the least it can weigh: a stub or an
# error page served with a 200 would be far smaller than Swagger UI's or ReDoc's files.
EXPECTED = {
    ".js": (("text/javascript", "application/javascript"), 500_000),
    ".css": (("text/css",), 50_000),
    ".png": (("image/png",), 1_000),
    ".svg": (("image/svg+xml",), 200),
}


class References(HTMLParser):
    """Every URL a page makes the browser load: script sources, link hrefs, images, ReDoc's spec."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if value is not None and (tag, name) in {
                ("script", "src"),
                ("link", "href"),
                ("img", "src"),
                ("redoc", "spec-url"),
            }:
                self.urls.append(value)


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    parser.close()
    return parser


def page_assets(client: httpx.Client, page: str) -> list[str]:
    """The page's referenced URLs, checked to be paths on the app itself."""
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    found = references(response.text)
    assert "script" in found.tags
    for url in found.urls:
        parts = urlsplit(url)
        # A path of the app's own: no scheme, no host (not even protocol-relative //host/).
        assert not parts.scheme and not parts.netloc and url.startswith("/"), (page, url)
    # Nor anywhere else in the page, inline scripts included.
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", response.text, re.IGNORECASE), response.text
    return found.urls


def check_served(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, url
    content_type = response.headers["content-type"]
    if url.endswith(".json"):
        assert content_type == "application/json"
        return response.content
    kinds, least = EXPECTED[url[url.rindex(".") :]]
    assert content_type.split(";")[0].strip() in kinds, (url, content_type)
    assert len(response.content) >= least, (url, len(response.content))
    return response.content


@pytest.mark.parametrize("page", PAGES)
def test_each_page_loads_only_the_apps_own_assets_and_the_app_serves_them(api: httpx.Client, page: str) -> None:
    urls = page_assets(api, page)
    assert any(url.endswith(".js") for url in urls)
    assert any(url.endswith(".png") for url in urls)  # the favicon
    for url in urls:
        check_served(api, url)


def test_swagger_ui_page_names_its_script_stylesheet_and_the_openapi_document(api: httpx.Client) -> None:
    urls = page_assets(api, "/docs")
    assert "/docs/swagger-ui-bundle.js" in urls
    assert "/docs/swagger-ui.css" in urls
    assert b"SwaggerUIBundle" in check_served(api, "/docs/swagger-ui-bundle.js")
    assert "url: '/openapi.json'" in api.get("/docs").text
    assert api.get("/docs/oauth2-redirect").status_code == 200


def test_redoc_page_names_its_script_and_its_logo_is_served_beside_the_page(api: httpx.Client) -> None:
    urls = page_assets(api, "/redoc")
    assert "/redoc/redoc.standalone.js" in urls
    assert "/openapi.json" in urls  # <redoc spec-url>
    script = check_served(api, "/redoc/redoc.standalone.js")
    # Upstream ReDoc shows its "by Redocly" logo from Redocly's CDN; this build asks for it
    # at the page's path + "/logo-mini.svg" instead, which the app serves.
    assert b"cdn.redoc.ly" not in script
    assert b'window.location.pathname+"/logo-mini.svg"' in script
    assert b"<svg" in check_served(api, "/redoc/logo-mini.svg")


def test_assets_answer_conditional_requests_and_nothing_else_of_the_package_is_served(api: httpx.Client) -> None:
    first = api.get("/docs/swagger-ui.css")
    assert api.get("/docs/swagger-ui.css", headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    for url in ("/docs/LICENSE", "/docs/swagger/swagger-ui.css", "/redoc/redoc.standalone.js.LICENSE.txt"):
        assert api.get(url).status_code == 404, url
    # A trailing slash still redirects to the page, as with FastAPI's own docs routes.
    assert api.get("/docs/", follow_redirects=True).url.path == "/docs"


def test_pages_and_assets_need_no_api_key_while_the_api_does(ports: Ports) -> None:
    from ingest.app import create_app

    app = create_app(replace(ports, settings=replace(ports.settings, api_keys=("docs-test-key",))))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v1/calls").status_code == 401
        for page in PAGES:
            for url in page_assets(client, page):
                check_served(client, url)
        assert client.get("/docs/oauth2-redirect").status_code == 200


def test_the_docs_routes_stay_out_of_the_openapi_document(api: httpx.Client) -> None:
    from ingest import docs

    paths = api.get("/openapi.json").json()["paths"]
    served = {"/docs", "/redoc", "/docs/oauth2-redirect", *docs.ASSETS}
    assert not served & set(paths)
    assert all(path.startswith("/v1/") or path == "/healthz" for path in paths)


def test_behind_a_proxy_prefix_every_url_keeps_it(ports: Ports) -> None:
    from ingest.app import create_app

    app = create_app(ports)

    async def fetch() -> dict[str, list[str]]:
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            found = {page: references((await client.get(f"/api{page}")).text).urls for page in PAGES}
            for urls in found.values():
                for url in urls:
                    assert (await client.get(url)).status_code == 200, url
            return found

    found = asyncio.run(fetch())
    assert found["/docs"] and found["/redoc"]
    assert all(url.startswith("/api/") for urls in found.values() for url in urls), found


@pytest.mark.usefixtures("lambda_loop")
def test_through_the_lambda_handler_the_pages_and_assets_are_served(ports: Ports) -> None:
    from ingest.app import create_app

    handler = Mangum(create_app(ports), lifespan="off")
    for page in PAGES:
        response = handler(api_event("GET", page), LAMBDA_CONTEXT)
        assert response["statusCode"] == 200
        for url in references(response["body"]).urls:
            served = handler(api_event("GET", url), LAMBDA_CONTEXT)
            assert served["statusCode"] == 200, url
            if url.endswith(".json"):
                json.loads(served["body"])
                continue
            body = served["body"]
            content = base64.b64decode(body) if served["isBase64Encoded"] else body.encode()
            kinds, least = EXPECTED[url[url.rindex(".") :]]
            assert served["headers"]["content-type"].split(";")[0] in kinds, url
            assert len(content) >= least, url
    # Scripts go out as text (Mangum base64-encodes only what it does not know as text).
    script = handler(api_event("GET", "/docs/swagger-ui-bundle.js"), LAMBDA_CONTEXT)
    assert not script["isBase64Encoded"]

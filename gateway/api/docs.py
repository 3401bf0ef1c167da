"""`/docs` (Swagger UI) and `/redoc` served with their assets from the gateway itself, so they work offline.

The JavaScript and CSS come from the pinned PyPI package `fastapi-offline` (it ships the Swagger UI and ReDoc dist
files); FastAPI's defaults load them from a CDN without integrity hashes. Each page carries a Content-Security-Policy
that allows only these same-origin assets and, by its hash, the one inline script Swagger UI needs.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from gateway.errors import NotFound

ASSET_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSET_URL = "/docs/assets"
# The only files served from ASSET_DIR: an allow-list, so no request path reaches the filesystem.
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
CACHE = {"Cache-Control": "public, max-age=86400"}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def page_csp(html: str) -> str:
    """Same-origin assets only; inline scripts allowed by their sha256 (Swagger UI's one-line start-up), inline
    styles allowed (both UIs set style attributes), ReDoc's search worker from a blob."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in _INLINE_SCRIPT.findall(html))
    return ("default-src 'none'; script-src 'self' " + hashes + "; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; font-src 'self'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")


def _html(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = page_csp(response.body.decode())
    return response


def build_docs_router(app: FastAPI) -> APIRouter:
    """Create the app with docs_url=None and redoc_url=None, then include this router."""
    router = APIRouter(include_in_schema=False)
    favicon = f"{ASSET_URL}/favicon.png"

    @router.get("/docs")
    def swagger() -> HTMLResponse:
        return _html(get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI", swagger_favicon_url=favicon,
            swagger_js_url=f"{ASSET_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSET_URL}/swagger-ui.css",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url))

    @router.get(app.swagger_ui_oauth2_redirect_url)
    def oauth2_redirect() -> HTMLResponse:
        return _html(get_swagger_ui_oauth2_redirect_html())

    @router.get("/redoc")
    def redoc() -> HTMLResponse:
        return _html(get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                                    redoc_js_url=f"{ASSET_URL}/redoc.standalone.js", redoc_favicon_url=favicon,
                                    with_google_fonts=False))

    @router.get(ASSET_URL + "/{name}")
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise NotFound(f"no documentation asset {name[:40]!r}")
        return FileResponse(ASSET_DIR / name, media_type=ASSETS[name], headers=CACHE)

    return router

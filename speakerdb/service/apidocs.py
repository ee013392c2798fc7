"""The API's reference page at ``/docs``: Swagger UI from the ``fastapi-offline`` package's
files, served by this service under the page's kind of policy.

FastAPI's own ``/docs`` and ``/redoc`` loaded their scripts from a CDN into this origin, where
the web page's tab keeps its key (docs/web.md), and showed nothing on a machine without
internet. Here every file comes from the package; the one inline script (which points Swagger
UI at ``/openapi.json``) is allowed by its hash, and nothing else runs.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response

from .responses import ApiError
from .web import MEDIA_TYPES, PAGE_HEADERS

DOCS = "/docs"
ASSETS = f"{DOCS}/assets"
#: The files of Swagger UI that the page loads; other files of the package are not served.
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def swagger_ui_dir() -> Path:
    """Where the ``fastapi-offline`` package keeps Swagger UI's files (only they are used)."""
    return Path(str(importlib.resources.files("fastapi_offline"))) / "static"


def policy(html: bytes) -> str:
    """The page's Content-Security-Policy: its files from this origin, its inline scripts by
    their hashes; inline styles, which Swagger UI sets on its elements, allowed."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html.decode())
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def install(app: FastAPI) -> None:
    """Add ``GET /docs`` (Swagger UI on ``app``'s OpenAPI document) and ``GET /docs/assets/{name}``
    to ``app``, which must be made with ``docs_url=None, redoc_url=None``."""
    assert app.openapi_url is not None
    html = bytes(
        get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        ).body
    )
    headers = {"Content-Security-Policy": policy(html), **PAGE_HEADERS}
    root = swagger_ui_dir()

    @app.get(DOCS, include_in_schema=False)
    def docs() -> Response:
        return Response(html, media_type=MEDIA_TYPES[".html"], headers=headers)

    @app.get(ASSETS + "/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in FILES:
            raise ApiError(404, "not_found", f"no file {name!r} in the API docs")
        path = root / name
        return Response(path.read_bytes(), media_type=MEDIA_TYPES[path.suffix], headers=headers)

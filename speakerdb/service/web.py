"""The web page at ``/``: static files shipped inside the package (``service/static/``), served
with the headers that keep the page to itself (docs/web.md).

No build step and nothing from outside: ``index.html``, plain ES modules and one stylesheet,
read from the package directory. Only the files that are there when the worker starts are
served (a name is looked up in that set, never joined onto a path), each with a
Content-Security-Policy that allows scripts, styles and connections to this origin only
(and its WebSocket), no framing, no referrer, no MIME sniffing.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .responses import ApiError

STATIC = Path(__file__).resolve().parent / "static"

#: What each kind of file is sent as; other files in the directory are not served.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}

# A Host header as browsers send it (name or [IPv6], optional port): anything else is left out
# of the policy rather than copied into a header.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """The page's policy: this origin only; ``connect-src`` names the WebSocket of this host
    too (``ws:``/``wss:``), which older browsers do not count as ``'self'``."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src 'self' blob:; connect-src 'self'{sockets}; worker-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


#: Sent with every file of the page (and of the API docs) besides its Content-Security-Policy.
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The page is small and changes with the package: always revalidated, never stale.
    "Cache-Control": "no-cache",
}


def security_headers(request: Request) -> dict[str, str]:
    """Headers sent with the page and every static file."""
    return {"Content-Security-Policy": content_security_policy(request.headers.get("host")), **PAGE_HEADERS}


def _files() -> dict[str, Path]:
    """Every servable file under :data:`STATIC`, by its path relative to it."""
    if not STATIC.is_dir():
        return {}
    return {
        p.relative_to(STATIC).as_posix(): p
        for p in sorted(STATIC.rglob("*"))
        if p.is_file() and p.suffix in MEDIA_TYPES and not p.is_symlink()
    }


def install(app: FastAPI) -> None:
    """Add ``GET /`` (the page) and ``GET /static/{name}`` (its files) to ``app``."""
    files = _files()

    def send(request: Request, name: str) -> Response:
        path = files.get(name)
        if path is None:
            raise ApiError(404, "not_found", f"no file {name!r} on this page")
        return Response(path.read_bytes(), media_type=MEDIA_TYPES[path.suffix], headers=security_headers(request))

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(request: Request) -> Response:
        """The web page (docs/web.md)."""
        return send(request, "index.html")

    @app.api_route("/static/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(request: Request, name: str) -> Response:
        """A file of the web page: scripts, the stylesheet, images."""
        return send(request, name)

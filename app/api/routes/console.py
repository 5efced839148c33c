"""The web console: one page and its two files, served from the package (no CDN, no build step); and
/redoc, whose script (from the fastapi-offline package) would fetch its sidebar's logo from a CDN.

These routes are not part of the API: they are left out of the OpenAPI document (`include_in_schema=False`),
need no key (the page asks for one and sends it with each API call) and take no body.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from app.errors import not_found

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# The page loads only what this server serves, and sends nothing elsewhere.
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
                                       "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
router = APIRouter(include_in_schema=False)


@router.get("/")
def get_console() -> FileResponse:
    """The console's page."""
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/redoc")
def get_redoc() -> HTMLResponse:
    """The API's document read with ReDoc."""
    return get_redoc_html(openapi_url="/openapi.json", title="gradlift - ReDoc", redoc_js_url="/console/redoc.js",
                          redoc_favicon_url=f"{_DOCS_STATIC}/favicon.png", with_google_fonts=False)


_DOCS_STATIC = "/static-offline-docs"  # where fastapi_offline serves its files
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@lru_cache(maxsize=1)
def _redoc_script() -> bytes:
    script = (Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js").read_bytes()
    return script.replace(_REDOC_LOGO, f"{_DOCS_STATIC}/favicon.png".encode())


@router.get("/console/redoc.js")
def get_redoc_script() -> Response:
    """ReDoc's script, its one request elsewhere (a logo) pointed at this server."""
    return Response(_redoc_script(), media_type=_TYPES[".js"], headers={"Cache-Control": "max-age=3600"})


@router.get("/console/{name}")
def get_console_file(name: str) -> FileResponse:
    """The console's script or style sheet."""
    path = CONSOLE_DIR / name
    if path.suffix not in _TYPES or path.parent != CONSOLE_DIR or not path.is_file():
        raise not_found("console file", name)
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)

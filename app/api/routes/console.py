"""The web console: one page and its two files, served from the package (no CDN, no build step).

These routes are not part of the API: they are left out of the OpenAPI document (`include_in_schema=False`),
need no key (the page asks for one and sends it with each API call) and take no body.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

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


@router.get("/console/{name}")
def get_console_file(name: str) -> FileResponse:
    """The console's script or style sheet."""
    path = CONSOLE_DIR / name
    if path.suffix not in _TYPES or path.parent != CONSOLE_DIR or not path.is_file():
        raise not_found("console file", name)
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)

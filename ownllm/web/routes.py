"""Serve the dashboard's static files: `GET /` is the page, `GET /static/...` its assets.

Registered last in `create_app`, and only on these two paths, so it never shadows
`/v1`, `/health`, `/ready`, `/metrics`, `/docs` or `/openapi.json`, and an unknown
`/v1/...` path still gets the OpenAI-shaped 404. Navigation inside the dashboard
uses the URL fragment (`/#/usage`), so the server needs no catch-all route.

Every response carries a strict Content-Security-Policy (same origin only, no
inline script) and `no-cache`, so an upgraded package is picked up on reload while
unchanged files revalidate by ETag. Left out: compression and fingerprinted names.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ownllm.errors import NotFoundError

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return _file(STATIC_DIR / "index.html")


@router.get("/static/{name:path}")
async def static_file(name: str) -> FileResponse:
    root = STATIC_DIR.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.suffix not in MEDIA_TYPES:
        raise NotFoundError(f"No such dashboard file: {name}")
    return _file(path)

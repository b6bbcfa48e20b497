"""The live page of `fsanet serve`: `GET /` and its script and style sheet.

Three static files shipped in the package (`ui/`), read once at start-up and served from
memory: no CDN, no build step, no file system access per request. The page itself holds no
secret (the API key is typed into it), so it is served without one; what it calls (`POST
/v1/pose`, `WS /v1/stream`) keeps its auth. `--no-ui` leaves it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsanet.core.errors import FsanetError

UI_DIR = Path(__file__).with_name("ui")

# path -> (file in ui/, content type)
PAGE_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}

# Only this origin's script, style and connections (the stream's ws:/wss: included); the
# camera's and the photo's pixels come from blob: URLs and canvases.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
)


def read_page(folder: Path = UI_DIR) -> dict[str, tuple[bytes, str]]:
    """path -> (body, content type) for every file of the page; a missing file is one line."""
    page = {}
    for path, (name, kind) in PAGE_FILES.items():
        try:
            page[path] = ((folder / name).read_bytes(), kind)
        except OSError as e:
            raise FsanetError(
                f"the live page's file {folder / name} cannot be read ({e.strerror or e}): "
                "reinstall fsanet, or serve without the page (--no-ui)"
            ) from None
    return page


class PageFiles:
    """Pure ASGI middleware: GET/HEAD of the page's paths answered from memory; everything
    else (the API, WebSockets) goes on to `app`."""

    def __init__(self, app: Any, page: dict[str, tuple[bytes, str]]) -> None:
        self.app, self.page = app, page

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        found = self.page.get(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        body, kind = found
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            body, kind, status = b'{"error": "method not allowed", "status": 405}', "", 405
            headers = [(b"content-type", b"application/json"), (b"allow", b"GET, HEAD")]
        else:
            status, headers = 200, [(b"content-type", kind.encode()), *_HEADERS]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

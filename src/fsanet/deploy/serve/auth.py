"""Optional bearer-token auth: `Authorization: Bearer <key>` on every route but the probes.

The key comes from a file (`api_key_file`) or the `FSANET_API_KEY` environment variable. It is
compared in constant time, and never logged, printed or put in metrics (`ServeConfig` keeps
it out of its repr).
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Any

from fsanet.core.errors import FsanetError

API_KEY_ENV = "FSANET_API_KEY"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes stay open: they reveal nothing


def read_api_key(path: str | os.PathLike[str] | None = None) -> str | None:
    """The key from `path` (stripped of surrounding white space), else from $FSANET_API_KEY,
    else None (no auth). An empty key is an error: read as "no auth", a typo or a secret that
    failed to load would leave the server open."""
    if path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise FsanetError(f"cannot read the API key file {path}: {e}") from None
        if not key:
            raise FsanetError(f"the API key file {path} is empty")
    else:
        value = os.environ.get(API_KEY_ENV)
        if value is None:
            return None
        key = value.strip()
        if not key:
            raise FsanetError(f"${API_KEY_ENV} is set but empty (unset it to serve without a key)")
    if not key.isascii() or not key.isprintable() or " " in key:
        raise FsanetError("the API key must be printable ASCII without spaces")
    return key


async def send_error(
    send: Any, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """The service's JSON error answer ({"error", "status"}) from pure ASGI middleware."""
    body = json.dumps({"error": message, "status": status}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Pure ASGI middleware: 401 unless the request carries the key."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send_error(
            send, 401, "missing or wrong API key", {"www-authenticate": 'Bearer realm="fsanet"'}
        )

    def _allowed(self, scope: Any) -> bool:
        given = [v for k, v in scope["headers"] if k == b"authorization"]
        # compare_digest takes as long whatever the first differing byte is.
        return len(given) == 1 and hmac.compare_digest(given[0], self._expected)

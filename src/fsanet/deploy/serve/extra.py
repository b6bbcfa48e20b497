"""The one line a missing part of the `serve` extra (FastAPI, uvicorn, httptools,
websockets, python-multipart) gets, whichever module imports it first."""

from __future__ import annotations

from fsanet.core.errors import FsanetError


def missing_serve_extra(error: ImportError) -> FsanetError:
    return FsanetError(
        f"fsanet serve needs the '{error.name}' package: pip install 'fsanet[serve]'"
    )

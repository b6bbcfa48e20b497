"""What `/openapi.json` says about each route: its request bodies and every answer it can give.

The routes read their bodies by hand (raw .npy, JSON or images, checked before parsing), so
FastAPI cannot infer any of this; it is written here, and the schema fuzzer in the tests
holds the server to it.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    "required": ["error", "status"],
}
_NUMBER = {"type": "number"}
POSE_SCHEMA = {
    "type": "object",
    "properties": {"yaw": _NUMBER, "pitch": _NUMBER, "roll": _NUMBER},
    "required": ["yaw", "pitch", "roll"],
}
FACE_SCHEMA = {
    "type": "object",
    "properties": {
        "box": {"type": "array", "items": _NUMBER, "minItems": 4, "maxItems": 4},
        "score": _NUMBER,
        "yaw": _NUMBER,
        "pitch": _NUMBER,
        "roll": _NUMBER,
        "landmarks": {"type": "array", "items": {"type": "array", "items": _NUMBER}},
    },
    "required": ["box", "score", "yaw", "pitch", "roll"],
}
CROPS_ANSWER = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "count": {"type": "integer", "minimum": 0},
        "poses": {"type": "array", "items": POSE_SCHEMA},
    },
    "required": ["model", "count", "poses"],
}
IMAGE_ANSWER = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "count": {"type": "integer", "minimum": 0},
        "total": {"type": "integer", "minimum": 0},
        "truncated": {"type": "boolean"},
        "faces": {"type": "array", "items": FACE_SCHEMA},
    },
    "required": ["model", "width", "height", "count", "total", "truncated", "faces"],
}
HEALTH_ANSWER = {
    "type": "object",
    "properties": {"status": {"type": "string"}},
    "required": ["status"],
}
READY_ANSWER = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "model": {"type": "string"},
        "variants": {"type": "array", "items": {"type": "string"}},
        "faces": {"type": "boolean"},
        "max_batch": {"type": "integer"},
        "max_wait_ms": _NUMBER,
    },
    "required": ["status", "model"],
}

_RETRY = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
# Answers any route can give: the HTTP layer's refusals (before the app), auth, rate limit.
_ANY = {
    400: "malformed HTTP request",
    408: "the headers or the body did not arrive in time",
    431: "the request headers are too large",
    503: "overloaded, starting or shutting down; retry after Retry-After",
}
_GUARDED = {401: "missing or wrong API key", 429: "too many requests from this client"}
_POSTS = {
    400: "malformed body",
    408: "the headers or the body did not arrive in time",
    413: "the body, image or crop count is over a limit, or over the memory budget",
    415: "unsupported content type",
    422: "the body parses but is not valid input (shape, dtype, pixel range)",
}


def responses(ok: dict[str, Any], *, guarded: bool = True, post: bool = False) -> dict[int, Any]:
    """FastAPI's `responses=`: a 200 (`ok`: media type -> schema) and every error it may give.
    `guarded`: behind the API key and the rate limit (all but the probes)."""
    errors = {**_ANY, **(_GUARDED if guarded else {}), **(_POSTS if post else {})}
    out: dict[int, Any] = {
        200: {"description": "OK", "content": {t: {"schema": s} for t, s in ok.items()}}
    }
    for status, text in sorted(errors.items()):
        entry: dict[str, Any] = {
            "description": text,
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        if status in (429, 503):
            entry["headers"] = _RETRY
        out[status] = entry
    return out


def body(*types: str, description: str) -> dict[str, Any]:
    """`openapi_extra` declaring a required request body of these media types."""
    content: dict[str, Any] = {t: {"schema": {"type": "string", "format": "binary"}} for t in types}
    if "application/json" in types:
        content["application/json"] = {
            "schema": {
                "type": "object",
                # Not spelled out to the last number: a fuzzer cannot make 12288 of them.
                "properties": {"crops": {"type": "array", "description": "N x 64 x 64 x 3, 0-255"}},
                "required": ["crops"],
            }
        }
    if "multipart/form-data" in types:
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        }
    return {"requestBody": {"required": True, "description": description, "content": content}}

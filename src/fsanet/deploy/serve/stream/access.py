"""Who may open a stream and how it runs: the origin check, the API key (a subprotocol or the
first message, never the URL) and the stream's options (query parameters, `options` messages).

No web framework here.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

from fsanet.deploy.serve.config import origin

SUBPROTOCOL = "fsanet.v1"
BEARER = "bearer."  # a subprotocol "bearer.<KEY>" carries the API key
# RFC 7230 token characters: all a Sec-WebSocket-Protocol value may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FLAGS = {"1": True, "true": True, "0": False, "false": False}


class Refused(Exception):
    """The stream is closed: a WebSocket close code and a one-line reason (at most 123
    bytes, the protocol's limit)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


# --- origin --------------------------------------------------------------------------------


def origin_allowed(
    given: str | None, host: str | None, secure: bool, allowed: tuple[str, ...]
) -> bool:
    """A handshake without an Origin header (not a browser) is allowed; a browser's only from
    the server's own origin (the scheme it was reached by, the Host header's host and port)
    or one of `allowed` (canonical, see `origin`; "*": any)."""
    if given is None:
        return True
    if "*" in allowed:
        return True
    try:
        canonical = origin(given)
    except ValueError:
        return False
    if canonical in allowed:
        return True
    if host is None:
        return False
    try:
        own = origin(f"{'https' if secure else 'http'}://{host}")
    except ValueError:
        return False
    return canonical == own


# --- the API key ---------------------------------------------------------------------------


def subprotocol_key(offered: list[str]) -> str | None:
    """The key of a `bearer.<KEY>` subprotocol, if one is offered; Refused (4401) when it
    holds characters no subprotocol may (a client that built the header by hand)."""
    for name in offered:
        if name.startswith(BEARER):
            key = name[len(BEARER) :]
            if not _TOKEN.fullmatch(key):
                raise Refused(4401, "invalid API key: a subprotocol key must be token characters")
            return key
    return None


def is_token(key: str) -> bool:
    """Whether `key` can travel as a `bearer.<KEY>` subprotocol (else: an auth message)."""
    return bool(_TOKEN.fullmatch(key))


def key_matches(given: object, expected: str) -> bool:
    # compare_digest takes as long whatever the first differing byte is.
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOptions:
    """How a stream runs: detection every K-th frame, smoothing, rotation matrices."""

    detect_every: int = 1
    smooth: bool = True
    rotation: bool = False

    def from_query(self, query: bytes) -> StreamOptions:
        """These options changed by a handshake's query string (`detect_every`, `smooth`,
        `rotation`); Refused (1008) for anything else, an API key above all."""
        try:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, strict_parsing=False)
        except ValueError:
            raise Refused(1008, "malformed query string") from None
        changes: dict[str, Any] = {}
        for name, value in pairs:
            if name == "detect_every":
                changes[name] = _positive(value)
            elif name in ("smooth", "rotation"):
                if value.lower() not in _FLAGS:
                    raise Refused(1008, f"{name} must be 1 or 0, got {value[:20]!r}")
                changes[name] = _FLAGS[value.lower()]
            elif name.lower() in ("key", "api_key", "token", "access_token", "authorization"):
                raise Refused(1008, "never put the API key in the URL: send it in a subprotocol")
            else:
                raise Refused(
                    1008, f"unknown query parameter {name[:20]!r} (detect_every, smooth, rotation)"
                )
        return replace(self, **changes)

    def from_message(self, message: dict[str, Any]) -> StreamOptions:
        """These options changed by an `options` message; Refused (1008) for a bad one."""
        changes: dict[str, Any] = {}
        for name, value in message.items():
            if name == "type":
                continue
            if name == "detect_every":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise Refused(1008, f"detect_every must be an integer >= 1, got {value!r:.20}")
                changes[name] = value
            elif name in ("smooth", "rotation"):
                if not isinstance(value, bool):
                    raise Refused(1008, f"{name} must be true or false, got {value!r:.20}")
                changes[name] = value
            else:
                raise Refused(
                    1008, f"unknown option {name[:20]!r} (detect_every, smooth, rotation)"
                )
        return replace(self, **changes)


def _positive(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < 1:
        raise Refused(1008, f"detect_every must be an integer >= 1, got {text[:20]!r}")
    return int(text)

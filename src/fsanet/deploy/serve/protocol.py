"""Connection limits on top of uvicorn's httptools protocol.

uvicorn times out idle keep-alive connections, but with httptools it has no limit on header
size, no timeout for a client that connects and never finishes its headers, and no cap on
open connections (`limit_concurrency` answers 503 only once a request has been parsed, while
idle sockets keep their file descriptors). This subclass adds the three:

- headers larger than `max_header_bytes` get 431 and the connection is closed;
- headers not complete `header_timeout_s` after the connection opened, or after the first
  byte of a keep-alive request, get 408 (or a silent close when nothing was sent at all);
- past `max_connections`, a new connection evicts the oldest one that has no request in
  progress, or is closed itself with 503 when every connection is busy.

Everything refused here never reaches the app, so it is counted in `fsanet_rejected_total`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar

from fsanet.core.errors import FsanetError
from fsanet.deploy.serve.metrics import ServeMetrics

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as e:  # httptools is in the `serve` extra
    raise FsanetError(
        f"fsanet serve needs the '{e.name}' package: pip install 'fsanet[serve]'"
    ) from None

PARSER_ERROR = "fsanet.parser_error"  # scope key: the HTTP parser refused this request's body


class _HeaderTooLarge(Exception):
    pass


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and time limits and a connection cap.

    `limited_protocol` makes a subclass with the settings filled in."""

    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024
    metrics: ClassVar[ServeMetrics | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True  # no request yet: waiting for the first header bytes
        self._sent_any = False
        self._since = time.monotonic()
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, with the parser's refusals counted and not logged (a hostile client
        # could fill the log) and oversized headers answered with 431.
        self._unset_keepalive_if_required()
        self._sent_any = True
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _HeaderTooLarge):  # raised in on_url/on_header
                self._refuse(431, "the request headers are too large", "header_too_large")
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head and self._head_bytes > self.max_header_bytes:
            # Still in the headers past the limit (a header line that never ends).
            self._refuse(431, "the request headers are too large", "header_too_large")

    # Parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._since = time.monotonic()
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._since = time.monotonic()

    def send_400_response(self, msg: str) -> None:
        # The parser refused the bytes. Mid-body (a malformed chunk) the app already runs: it
        # will see a disconnect, but the client got 400, so say so to the metrics.
        if self.cycle is not None and not self.cycle.response_complete:
            self.scope[PARSER_ERROR] = True  # type: ignore[typeddict-unknown-key]
        else:
            self._count("bad_request")
        self._in_head = False
        self._cancel_head_timer()
        super().send_400_response(msg)

    # Limits ---------------------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        # on_url/on_header see the exact sizes (data_received also counts body bytes that came
        # in the same read as the end of the headers).
        self._exact_head = getattr(self, "_exact_head", 0) + size
        if self._exact_head > self.max_header_bytes:
            self._exact_head = 0
            raise _HeaderTooLarge

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._exact_head = 0
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._sent_any:
            self._refuse(408, "the request headers did not arrive in time", "header_timeout")
        else:  # a connection that never sent anything: nobody to answer
            self._count("idle_timeout")
            self.transport.close()

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _make_room(self) -> None:
        idle = [c for c in self.connections if c is not self and getattr(c, "_idle", None)]
        idle = [c for c in idle if c._idle() and not c.transport.is_closing()]
        if idle:
            oldest = min(idle, key=lambda c: c._since)
            oldest._count("evicted")
            oldest.transport.close()
        else:
            self._refuse(503, "too many connections", "too_many_connections")

    def _refuse(self, status: int, message: str, reason: str) -> None:
        self._count(reason)
        self._in_head = False
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message, "status": status}).encode()
        phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
        head = (
            f"HTTP/1.1 {status} {phrase.get(status, 'Service Unavailable')}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
        )
        if status == 503:
            head += "retry-after: 1\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)
        self.transport.close()

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.inc(reason=reason)


def limited_protocol(
    *,
    max_header_bytes: int,
    header_timeout_s: float,
    max_connections: int,
    metrics: ServeMetrics | None,
) -> type[LimitedHttpProtocol]:
    settings: dict[str, Any] = {
        "max_header_bytes": max_header_bytes,
        "header_timeout_s": header_timeout_s,
        "max_connections": max_connections,
        "metrics": metrics,
    }
    return type("FsanetHttpProtocol", (LimitedHttpProtocol,), settings)


def default_max_connections() -> int:
    """1024, or fewer where the open-file limit is lower (64 descriptors kept for the rest)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft - 64))

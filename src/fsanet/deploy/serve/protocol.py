"""Connection limits on top of uvicorn's httptools protocol.

uvicorn times out idle keep-alive connections, but with httptools it has no limit on header
size, no timeout for a client that connects and never finishes its headers, and no cap on
open connections (`limit_concurrency` answers 503 only once a request has been parsed, while
idle sockets keep their file descriptors). This subclass adds the three:

- headers larger than `max_header_bytes` get 431 and the connection is closed;
- headers not complete `header_timeout_s` after the connection opened, or after the first
  byte of a keep-alive request, get 408 (or a silent close when nothing was sent at all);
- past `max_connections`, a new connection evicts the oldest socket still in its TLS
  handshake, else the oldest connection that has no request in progress, or is closed itself
  (with 503 when it speaks HTTP already) when every connection is busy.

With TLS (fsanet.deploy.serve.tls) a connection is counted from the moment it is accepted, and its
handshake must end within `tls_handshake_timeout_s`. When the server drains (SIGTERM), a
request that arrives on an open connection is still answered, with `connection: close`.

Everything refused here never reaches the app, so it is counted in `fsanet_rejected_total`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fsanet.deploy.serve.extra import missing_serve_extra
from fsanet.deploy.serve.metrics import ServeMetrics

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as e:  # httptools is in the `serve` extra
    raise missing_serve_extra(e) from None

PARSER_ERROR = "fsanet.parser_error"  # scope key: the HTTP parser refused this request's body


# Draining: how long a connection with no request in progress stays open. A client may be
# sending its next request on it at this very moment; closed under it, that request is reset.
DRAIN_GRACE_S = 1.0


class _HeaderTooLarge(Exception):
    pass


@dataclass
class Connections:
    """What the connections of one server share besides uvicorn's set of open ones."""

    handshaking: dict[LimitedHttpProtocol, None] = field(default_factory=dict)  # oldest first
    draining: bool = False


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and time limits and a connection cap.

    `limited_protocol` makes a subclass with the settings filled in."""

    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024
    tls_handshake_timeout_s: ClassVar[float] = 5.0
    metrics: ClassVar[ServeMetrics | None] = None
    shared: ClassVar[Connections] = Connections()  # limited_protocol gives each server its own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw: asyncio.BaseTransport | None = None  # TLS: the socket under the handshake
        self._tls_timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.handshake_ended()  # TLS: the handshake is done (it already counts as open)
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True  # no request yet: waiting for the first header bytes
        self._sent_any = False
        self._since = time.monotonic()
        self._arm_head_timer()
        if self._open() > self.max_connections:
            self._make_room()
        if self.shared.draining:  # accepted just before the listening socket closed
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        super().connection_lost(exc)

    # TLS: fsanet.deploy.serve.tls calls these around the handshake, before connection_made.

    def handshake_started(self, raw: asyncio.BaseTransport) -> None:
        self._raw = raw
        self.shared.handshaking[self] = None
        self._tls_timer = self.loop.call_later(self.tls_handshake_timeout_s, self._tls_timeout)
        if self._open() > self.max_connections:
            self._make_room()

    def handshake_ended(self) -> None:
        """Done, failed, or the socket is gone."""
        self.shared.handshaking.pop(self, None)
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None

    def _tls_timeout(self) -> None:
        self._tls_timer = None
        if self in self.shared.handshaking:
            self._count("tls_handshake_timeout")
            self._drop_handshake()

    def _drop_handshake(self) -> None:
        self.handshake_ended()
        if self._raw is not None:
            self._raw.abort()  # not close(): that would wait to flush to a client that may not read

    # Draining -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn calls this on every open connection once the server stops accepting. Its
        own closes idle ones at once, which resets a request the client is sending on one
        right then; here whatever arrives within DRAIN_GRACE_S is answered, with
        `connection: close`."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif self._drain_timer is None and not self.transport.is_closing():
            self._drain_timer = self.loop.call_later(DRAIN_GRACE_S, self._drain_idle)

    def _drain_idle(self) -> None:
        if self._idle() and not (self._in_head and self._sent_any):  # not mid-headers
            self.transport.close()

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
        if self.shared.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed

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

    def _open(self) -> int:
        return len(self.connections) + len(self.shared.handshaking)

    def _make_room(self) -> None:
        """Past max_connections: close the oldest socket still in its TLS handshake, else the
        oldest connection with no request in progress, else refuse this one."""
        pending = next((c for c in self.shared.handshaking if c is not self), None)
        if pending is not None:
            pending._count("tls_evicted")
            pending._drop_handshake()
            return
        idle = [c for c in self.connections if c is not self and getattr(c, "_idle", None)]
        idle = [c for c in idle if c._idle() and not c.transport.is_closing()]
        if idle:
            oldest = min(idle, key=lambda c: c._since)
            oldest._count("evicted")
            oldest.transport.close()
        elif self in self.shared.handshaking:  # no HTTP spoken yet: nothing to answer with
            self._count("too_many_connections")
            self._drop_handshake()
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
    tls_handshake_timeout_s: float = 5.0,
) -> type[LimitedHttpProtocol]:
    settings: dict[str, Any] = {
        "max_header_bytes": max_header_bytes,
        "header_timeout_s": header_timeout_s,
        "max_connections": max_connections,
        "tls_handshake_timeout_s": tls_handshake_timeout_s,
        "metrics": metrics,
        "shared": Connections(),
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

"""uvicorn's WebSocket protocol with what a stream needs from its connection.

- Messages are limited per connection: `CONTROL_BYTES` (auth and options) until the stream is
  admitted, then the stream's receive slot (`Controls.limit`). websockets refuses a frame
  whose header declares more before reading its payload (close 1009), so nobody can make the
  server buffer a large message before it has a key and a place.
- A stream that stops reading its answers is dropped hard (`Controls.abort`): a close would
  wait for buffered answers to drain to a client that takes none.
- Shutting down twice (fsanet's drain, then uvicorn's) closes once, with 1012.
- Its socket's send buffer is small: answers are a few hundred bytes, and a client that stops
  reading shows within a few dozen answers instead of megabytes of them in the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from fsanet.deploy.serve.extra import missing_serve_extra

try:  # the `serve` extra
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError as e:
    raise missing_serve_extra(e) from None

TRANSPORT = "fsanet.stream_transport"  # scope key: the connection's `Controls`
CONTROL_BYTES = 64 * 1024  # the largest message before admission, and any text message
SEND_BUFFER = 32 * 1024  # bytes: the socket's send buffer and the transport's high-water mark


class Controls:
    """What the app may do to its stream's connection."""

    def __init__(self, protocol: StreamProtocol) -> None:
        self._protocol = protocol

    def limit(self, nbytes: int) -> None:
        """The largest message the client may send from now on (larger: close 1009)."""
        conn: Any = self._protocol.conn
        # websockets 15 split max_size into message and fragment limits; before, one limit.
        name = "max_message_size" if hasattr(conn, "max_message_size") else "max_size"
        setattr(conn, name, nbytes)

    def abort(self) -> None:
        """Drop the connection at once, whatever is still buffered for the client."""
        self._protocol.transport.abort()


class StreamProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol, giving the app its `Controls` in the scope."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock: Any = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError, TypeError):
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        with contextlib.suppress(AttributeError, NotImplementedError):
            transport.set_write_buffer_limits(high=SEND_BUFFER)  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        # fsanet's drain (server._Server.shutdown) shuts every connection down, then uvicorn's
        # does it again: a second close frame would raise InvalidState and end the process.
        if getattr(self, "_shut", False):
            return
        self._shut = True
        super().shutdown()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # accepted by websockets: the app's task has not started yet
            scope[TRANSPORT] = Controls(self)  # type: ignore[literal-required]

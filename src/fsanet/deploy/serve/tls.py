"""TLS done here rather than by the event loop, so that a socket in its handshake is seen.

Given `ssl=`, asyncio's and uvloop's servers wrap each accepted socket in a TLS protocol of
their own and tell uvicorn's protocol nothing until the handshake is over: a client that
connects and never finishes the handshake holds a socket for 60 s and is not counted against
`--max-connections`, so 300 of them under `ulimit -n 256` leave no socket for anyone. Here
the server listens for plain TCP, and each connection's protocol is asyncio's TLS protocol
around ours, which hears of the socket as soon as it is accepted (`handshake_started`): it is
counted, evicted first when sockets run out, and dropped after `--tls-handshake-timeout`.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from typing import Any

from fsanet.deploy.serve.protocol import LimitedHttpProtocol


class _Handshaking(SSLProtocol):
    # asyncio reads TLS records into a buffer of this size, one per connection (its default,
    # 256 KiB, would make 1000 idle handshakes hold 256 MB).
    max_size = 64 * 1024

    def __init__(
        self, loop: asyncio.AbstractEventLoop, app: LimitedHttpProtocol, context: ssl.SSLContext
    ) -> None:
        # The app protocol times the handshake out (and counts it); asyncio's timer is a backstop.
        timeout = 2 * app.tls_handshake_timeout_s
        super().__init__(loop, app, context, None, server_side=True, ssl_handshake_timeout=timeout)
        self._app = app  # SSLProtocol forgets its app protocol when the socket closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # starts the handshake (it needs the client's bytes)
        self._app.handshake_started(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._app.handshake_ended()  # no-op once the handshake is done
        super().connection_lost(exc)


def tls_protocol(
    protocol: type[LimitedHttpProtocol], context: ssl.SSLContext
) -> Callable[..., asyncio.BaseProtocol]:
    """What uvicorn takes as its `http` protocol class: `protocol` behind TLS."""

    def create(**kwargs: Any) -> asyncio.BaseProtocol:  # uvicorn's keyword arguments
        app = protocol(**kwargs)
        return _Handshaking(app.loop, app, context)

    return create


def server_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A server context with Python's defaults (TLS 1.2 and up); OSError for a bad pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context

"""Running the app: uvicorn on a socket bound first, TLS done here, signals, a drain that
answers what was accepted, and the start-up lines that print every limit."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fsanet.core.errors import FsanetError
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.extra import missing_serve_extra

try:  # the `serve` extra; without it, one line telling how to install it
    import uvicorn
except ImportError as e:
    raise missing_serve_extra(e) from None

from fsanet.deploy.serve.budget import MB
from fsanet.deploy.serve.protocol import (
    LimitedHttpProtocol,
    limited_protocol,
)
from fsanet.deploy.serve.stream.session import receive_slot
from fsanet.deploy.serve.stream.transport import CONTROL_BYTES, StreamProtocol
from fsanet.deploy.serve.tls import server_context, tls_protocol

if TYPE_CHECKING:
    from fsanet.engine.pose import PoseEngine
    from fsanet.faces.estimator import HeadPoseEstimator


from fsanet.deploy.serve.app import create_app
from fsanet.deploy.serve.service import Offload, PoseService


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, protocol: type[LimitedHttpProtocol]) -> None:
        super().__init__(config)
        self.protocol = protocol  # the connections' shared state (handshakes, draining)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers (SIGINT/SIGTERM start a graceful shutdown), without re-raising
        the signal afterwards: that would kill the process before the engine is closed, and a
        drained shutdown is a normal exit (code 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's, with nothing reset: connections the kernel has accepted but the server
        not yet taken (closing the listening socket would reset them) are taken in, requests
        that arrive on open connections are answered (LimitedHttpProtocol.shutdown), and TLS
        handshakes under way may finish (each within the handshake timeout)."""
        shared = self.protocol.shared
        shared.draining = True
        backlog = [conn for sock in sockets or [] for conn in _accept_all(sock)]
        for server in self.servers:  # right after: new connections are refused from here on
            server.close()
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        for conn in backlog:
            try:
                await loop.connect_accepted_socket(self._new_protocol, conn)
            except OSError:  # the client has gone already
                conn.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        while shared.handshaking and not self.force_exit:
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)

    def _new_protocol(self) -> asyncio.BaseProtocol:
        """What uvicorn's server makes for each connection it accepts."""
        make: Any = self.config.http_protocol_class
        return make(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )


def _accept_all(sock: socket.socket, most: int = 4096) -> list[socket.socket]:
    """The connections waiting in a listening socket's backlog (without waiting for more)."""
    sock.setblocking(False)
    accepted = []
    for _ in range(most):
        try:
            conn, _ = sock.accept()
        except OSError:  # the backlog is empty (BlockingIOError), or no file descriptor is left
            break
        conn.setblocking(False)
        accepted.append(conn)
    return accepted


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def listen(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a busy port is one clear error (and port 0 works)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise FsanetError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    engine: PoseEngine,
    config: ServeConfig | None = None,
    estimator: HeadPoseEstimator | None = None,
    remote: Offload | None = None,
) -> None:
    """Run the service until SIGINT/SIGTERM; shutdown lets requests in flight finish."""
    config = config or ServeConfig()
    if remote is None:  # remote replicas warm up their own engines
        engine.warm_up(config.max_batch)  # before listening: no request waits for it
    context = tls_context(config)  # a bad certificate or key: one line now, not in uvicorn
    app = create_app(engine, config, estimator, remote)
    sock = listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    scheme = "https" if config.ssl_certfile else "http"
    print(f"fsanet serve: listening on {url(scheme, host, port)}", flush=True)
    if config.ui:
        print(f"fsanet serve: the live page: {page_address(scheme, host, port)}", flush=True)
    service: PoseService = app.state.service
    for line in startup_lines(engine.name, config, faces=service.faces, host=host):
        print(line, file=sys.stderr, flush=True)
    protocol = limited_protocol(
        max_header_bytes=config.max_header_bytes,
        header_timeout_s=config.header_timeout_s,
        max_connections=config.max_connections,
        metrics=service.metrics,
        tls_handshake_timeout_s=config.tls_handshake_timeout_s,
    )
    server = _Server(
        uvicorn.Config(
            app,
            # TLS is ours, not uvicorn's: see fsanet.deploy.serve.tls.
            http=protocol if context is None else tls_protocol(protocol, context),  # type: ignore[arg-type]
            # Streams: our websockets protocol (per-stream message limits, a hard drop); no
            # compression (JPEG frames do not shrink; answers are small).
            ws=StreamProtocol,
            ws_max_size=CONTROL_BYTES,
            ws_per_message_deflate=False,
            log_level="warning",
            access_log=config.access_log,
            timeout_graceful_shutdown=config.graceful_timeout_s,
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  (a float works)
            # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise.
            proxy_headers=bool(config.forwarded_allow_ips),
            forwarded_allow_ips=list(config.forwarded_allow_ips),
        ),
        protocol,
    )
    if config.access_log:  # uvicorn set its access logger to log_level: it logs at INFO
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    server.run(sockets=[sock])
    print("fsanet serve: stopped", file=sys.stderr, flush=True)


def check_tls(config: ServeConfig) -> None:
    """Load the certificate and key once, to refuse bad ones in one line."""
    tls_context(config)


def tls_context(config: ServeConfig) -> ssl.SSLContext | None:
    """The server's TLS context (None without a certificate), or a one-line FsanetError."""
    if config.ssl_certfile is None:
        return None
    try:
        return server_context(config.ssl_certfile, config.ssl_keyfile)
    except FileNotFoundError as e:
        raise FsanetError(f"TLS: {e.filename or config.ssl_certfile} does not exist") from None
    except OSError as e:  # ssl.SSLError is an OSError: a damaged file or a key not matching
        files = " / ".join(f for f in (config.ssl_certfile, config.ssl_keyfile) if f)
        reason = getattr(e, "reason", None) or e.strerror or str(e)
        raise FsanetError(f"TLS: cannot use the certificate and key {files}: {reason}") from None


def url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def page_address(scheme: str, host: str, port: int) -> str:
    """Where a browser on this machine opens the page: a wildcard bind (0.0.0.0, ::) is not
    an address to open, so loopback stands for it (others use this machine's address)."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}
    return url(scheme, wildcard.get(host, host), port) + "/"


def startup_lines(engine_name: str, config: ServeConfig, *, faces: bool, host: str) -> list[str]:
    """What `serve` prints to stderr on start: the engine and every limit in force."""
    lim = config.limits
    lines = [
        f"  engine {engine_name}; max batch {config.max_batch}, max wait {config.max_wait_ms:g} ms;"
        f" faces {'on' if faces else 'off'}",
        f"  requests: body <= {lim.max_body_bytes / MB:g} MiB, image <= {lim.max_pixels} pixels,"
        f" <= {lim.max_crops} crops; queue <= {lim.max_queue} crops; in-flight memory <="
        f" {config.max_inflight_mb:g} MB ({config.max_waiting} may wait)",
        f"  timeouts: body {lim.body_timeout_s:g} s, request {lim.request_timeout_s:g} s,"
        f" headers {config.header_timeout_s:g} s, keep-alive {config.keep_alive_s:g} s;"
        f" headers <= {config.max_header_bytes // 1024} KiB; <= {config.max_connections}"
        f" connections; auth {'on' if config.api_key is not None else 'off'};"
        f" docs {'on' if config.docs else 'off'}",
        f"  clients: rate {_rate(config)}; TLS {_tls(config)}; proxy headers believed from"
        f" {', '.join(config.forwarded_allow_ips) or 'nobody'}",
        _streams(config, faces),
    ]
    if config.api_key is None and not _is_loopback(host):
        lines.append(
            f"fsanet serve: warning: listening on {host} without an API key: anyone who can "
            "reach it can use this server (set FSANET_API_KEY or an API key file)"
        )
    return lines


def _streams(config: ServeConfig, faces: bool) -> str:
    if not faces:
        return "  streams: off (no face detector)"
    slot = receive_slot(config.limits.max_body_bytes) / MB
    video = config.video
    size = f" at {video.detect_size} px" if video.detect_size else ""
    origins = ", ".join(("this server's", *config.allowed_origins))
    return (
        f"  streams: <= {config.max_streams} (each holds {slot:g} MiB of the in-flight memory);"
        f" idle {config.stream_idle_s:g} s, send {config.stream_send_timeout_s:g} s; detect"
        f" every {video.detect_every}{size} by default; pages from {origins}"
    )


def _tls(config: ServeConfig) -> str:
    if config.ssl_certfile is None:
        return "off"
    return f"on (handshake {config.tls_handshake_timeout_s:g} s)"


def _rate(config: ServeConfig) -> str:
    if config.rate_limit is None:
        return "unlimited"
    burst = config.rate_burst or max(1, math.ceil(config.rate_limit))
    return f"<= {config.rate_limit:g} requests/s per address (bursts of {burst})"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"

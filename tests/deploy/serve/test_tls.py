"""TLS handshakes bounded like headers: clients that connect and never finish the handshake
count against the connection cap, are the first closed when sockets run out, and are closed
after the handshake timeout, so HTTPS keeps answering under a low open-file limit.

Scale it up for docs/SERVING.md with FSANET_TLS_IDLE (idle handshakes; the /healthz
latencies are printed; run with -s).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time

import httpx
import numpy as np

IDLE = int(os.environ.get("FSANET_TLS_IDLE", "300"))
TIMEOUT_S = 2.0
REJECTED = 'fsanet_rejected_total{reason="%s"}'


def _get(tls: ssl.SSLSocket) -> bytes:
    """GET /healthz on an open TLS connection, kept alive; the answer's head and body."""
    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"}"):
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_idle_handshakes_under_a_low_file_limit(config_server, certificate):
    cert, key = certificate
    trust = ssl.create_default_context(cafile=str(cert))
    srv = config_server(
        nofile=256,  # <= 192 connections
        verify=trust,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        tls_handshake_timeout_s=TIMEOUT_S,
    )
    assert srv.url.startswith("https://")
    # A client with a keep-alive connection open before the flood.
    kept = trust.wrap_socket(
        socket.create_connection(("127.0.0.1", srv.port), timeout=10), server_hostname="127.0.0.1"
    )
    assert _get(kept).startswith(b"HTTP/1.1 200")
    opened = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(IDLE)]
    try:
        # Handshakes are evicted before idle keep-alive connections: this one is still open.
        assert _get(kept).startswith(b"HTTP/1.1 200")
        latencies = []
        for _ in range(20):  # new HTTPS connections, each needing a socket and a handshake
            start = time.perf_counter()
            assert httpx.get(f"{srv.url}/healthz", verify=trust, timeout=10).status_code == 200
            latencies.append(time.perf_counter() - start)
        good = srv.post_crops(np.full((1, 64, 64, 3), 90, np.uint8))
        assert good.status_code == 200, good.text
        # Every idle socket is closed by the server: evicted at once, or at the timeout.
        closed_after = []
        for sock in idle:
            sock.settimeout(max(0.1, opened + TIMEOUT_S + 10 - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):  # a timeout fails the test
                assert sock.recv(1) == b""
            closed_after.append(time.monotonic() - opened)
    finally:
        kept.close()
        for sock in idle:
            sock.close()
    evicted = srv.metric(REJECTED % "tls_evicted")
    timed_out = srv.metric(REJECTED % "tls_handshake_timeout")
    ms = np.array(latencies) * 1000
    print(
        f"\n{IDLE} idle TLS handshakes, ulimit -n 256: /healthz over new connections"
        f" p50 {np.median(ms):.1f} ms, max {ms.max():.1f} ms; all closed"
        f" {max(closed_after):.1f} s after opening; {evicted:g} evicted, {timed_out:g} timed out"
    )
    assert max(closed_after) < TIMEOUT_S + 10  # a generous guard: 60 s before
    assert evicted >= IDLE - 192 and timed_out >= 1
    assert srv.metric(REJECTED % "evicted") == 0  # no keep-alive connection was closed for them
    assert srv.proc.poll() is None

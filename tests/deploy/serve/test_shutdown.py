"""SIGTERM under load: every request sent before it is answered, nothing is reset, and new
connections are refused.

Rounds of: a real server, 16 clients posting crops back to back over keep-alive connections,
SIGTERM while they run. Scale it up for docs/SERVING.md with FSANET_SHUTDOWN_ROUNDS (the
outcomes of each round are printed; run with -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest

ROUNDS = int(os.environ.get("FSANET_SHUTDOWN_ROUNDS", "3"))
CLIENTS = 16
NPY = {"content-type": "application/x-npy"}
GOOD = np.full((2, 64, 64, 3), 100, np.uint8)


def refused(error: httpx.TransportError) -> bool:
    """A connection the server's port refused: it has stopped listening."""
    return isinstance(error, httpx.ConnectError) and "refused" in str(error).lower()


class Outcomes:
    """What the clients got, by status code or error (thread-safe)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] += 1


def load_until_refused(url: str, body: bytes, outcomes: Outcomes, deadline: float) -> None:
    """One client: posts back to back until a new connection is refused (or `deadline`)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                response = client.post("/v1/pose/crops", content=body, headers=NPY)
            except httpx.TransportError as e:
                outcomes.add("refused" if refused(e) else f"{type(e).__name__}: {e}")
                if refused(e):
                    return
                continue
            outcomes.add(str(response.status_code))


def test_sigterm_under_load_answers_everything_and_resets_nothing(make_server):
    problems = []  # every round runs, so that a scaled-up run counts them all
    for round_ in range(ROUNDS):
        srv = make_server("--no-faces", "--max-wait-ms", "10")
        data = srv.npy(GOOD)
        outcomes = Outcomes()
        deadline = time.monotonic() + 60
        clients = [
            threading.Thread(target=load_until_refused, args=(srv.url, data, outcomes, deadline))
            for _ in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        while outcomes.counts["200"] < 100 and time.monotonic() < deadline:  # all under way
            time.sleep(0.01)
        answered_before = outcomes.counts["200"]
        srv.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        for client in clients:
            client.join(70)
        srv.proc.wait(60)  # srv.stop() would send a second SIGTERM to a server still exiting
        took = time.monotonic() - sent
        code, log = srv.stop()
        counts = outcomes.counts
        print(
            f"\nround {round_ + 1}: {answered_before} answered before SIGTERM, {dict(counts)};"
            f" exit {code} {took:.1f} s after SIGTERM"
        )
        if code != 0:
            problems.append(f"round {round_ + 1}: exit {code}: {log}")
        # Only answers and refusals: no reset, no connection closed under a request; every
        # client ended on a refused connection, and those in flight at SIGTERM were answered.
        if set(counts) - {"200", "refused"} or counts["refused"] != CLIENTS:
            problems.append(f"round {round_ + 1}: {dict(counts)}")
        if counts["200"] <= answered_before:
            problems.append(f"round {round_ + 1}: nothing answered after SIGTERM")
    assert not problems


async def _hello(scope: dict, receive: Any, send: Any) -> None:
    """A minimal ASGI app: what is tested here is the connection handling around it."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        assert message["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


def _exchange(client: socket.socket) -> bytes:
    """One GET; the answer (read until its body, or until the server closes)."""
    client.settimeout(10)
    data = b""
    with contextlib.suppress(OSError):
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while not data.endswith(b"hello") and (chunk := client.recv(65536)):
            data += chunk
    return data


def test_requests_on_open_connections_at_shutdown_are_answered_not_reset():
    """At shutdown, a connection the kernel accepted but the server had not taken yet (closing
    the listening socket would reset it), and a request sent on an idle keep-alive connection
    (closing it would reset that request) are answered, with `connection: close`."""
    import uvicorn

    from fsanet.deploy.serve.protocol import limited_protocol
    from fsanet.deploy.serve.server import _Server, listen

    protocol = limited_protocol(
        max_header_bytes=8192, header_timeout_s=5, max_connections=16, metrics=None
    )
    config = uvicorn.Config(_hello, http=protocol, log_level="warning", lifespan="on")
    server = _Server(config, protocol)
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]

    async def main() -> tuple[bytes, bytes, bytes]:
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        kept = socket.create_connection(("127.0.0.1", port))
        first = await asyncio.to_thread(_exchange, kept)  # kept alive, idle from now on
        # No await between this connect and the shutdown: the event loop never sees it.
        waiting = socket.create_connection(("127.0.0.1", port))
        backlog = asyncio.ensure_future(asyncio.to_thread(_exchange, waiting))
        stopping = asyncio.ensure_future(server.shutdown(sockets=[sock]))
        await asyncio.sleep(0.2)  # the server drains; the client sends its next request now
        again = await asyncio.to_thread(_exchange, kept)
        await stopping
        kept.close()
        waiting.close()
        return first, await backlog, again

    first, backlog, again = asyncio.run(main())
    assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
    for answer in (backlog, again):
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello"), answer
        assert b"connection: close" in answer.lower()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)

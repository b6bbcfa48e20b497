"""A load tool for `fsanet serve`: N concurrent clients for a bounded time, on loopback only.

Each client keeps one HTTP/1.1 keep-alive connection and sends the next request as soon as the
answer arrives (closed loop). The client is a few lines of asyncio instead of an HTTP library
because it shares the machine's cores with the server: the less it costs, the more the
numbers measure the server.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from fsanet.core.errors import FsanetError

MAX_DURATION_S = 600.0
MAX_REQUESTS = 10_000_000
MAX_CONCURRENCY = 1024


@dataclass
class LoadReport:
    """Throughput and latency of one load run (`__str__` for people, `to_dict` for JSON)."""

    url: str
    concurrency: int
    crops_per_request: int | None  # None: images (the faces per image are the server's to find)
    duration_s: float
    ok: int
    errors: int
    statuses: dict[str, int]
    latencies_ms: list[float] = field(repr=False)
    mean_batch: float | None = None  # from the server's /metrics, when it has them

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        lat = {f"p{q}": round(self.percentile(q), 2) for q in (50, 90, 99)}
        if self.latencies_ms:
            lat["mean"] = round(float(np.mean(self.latencies_ms)), 2)
            lat["max"] = round(float(np.max(self.latencies_ms)), 2)
        return {
            "url": self.url,
            "concurrency": self.concurrency,
            "crops_per_request": self.crops_per_request,
            "duration_s": round(self.duration_s, 2),
            "requests_ok": self.ok,
            "errors": self.errors,
            "statuses": self.statuses,
            "throughput_rps": round(self.throughput, 1),
            "crops_per_s": (
                None
                if self.crops_per_request is None
                else round(self.throughput * self.crops_per_request, 1)
            ),
            "latency_ms": lat,
            "server_mean_batch": None if self.mean_batch is None else round(self.mean_batch, 2),
        }

    def __str__(self) -> str:
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(self.statuses.items()))
        batch = "" if self.mean_batch is None else f"; server mean batch {self.mean_batch:.1f}"
        per = self.crops_per_request
        what = "one image per request" if per is None else f"{per} crop(s) per request"
        crops = "" if per is None else f", {self.throughput * per:.1f} crops/s"
        return (
            f"loadtest {self.url}: {self.concurrency} clients, {self.duration_s:.1f} s, {what}\n"
            f"  {self.ok} ok, {self.errors} errors ({statuses or 'none'})\n"
            f"  throughput {self.throughput:.1f} req/s{crops}{batch}\n"
            f"  latency ms: p50 {self.percentile(50):.1f}  p90 {self.percentile(90):.1f}  "
            f"p99 {self.percentile(99):.1f}"
        )


def loopback_target(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a loopback URL; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise FsanetError(f"expected an http://127.0.0.1:PORT/... URL, got {url!r}")
    try:
        port = parts.port or 80
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, port)}
    except (OSError, ValueError) as e:
        raise FsanetError(f"cannot resolve {url!r}: {e}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise FsanetError(f"the load tool only targets loopback addresses, not {parts.hostname}")
    return sorted(addresses)[0], port, parts.path or "/"


class _Connection:
    """One keep-alive HTTP/1.1 connection that reads Content-Length responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, data: bytes) -> tuple[int, bytes, bool]:
        """(status, body, server wants the connection closed)."""
        self.writer.write(data)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise ValueError("chunked responses are not supported by the load tool")
        return status, await self.reader.readexactly(length), close

    def close(self) -> None:
        self.writer.close()


def _request_bytes(host: str, port: int, method: str, path: str, body: bytes, kind: str) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if method == "POST":
        head += f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def _get(host: str, port: int, path: str) -> tuple[int, bytes]:
    conn = await _Connection.open(host, port)
    try:
        status, body, _ = await conn.request(_request_bytes(host, port, "GET", path, b"", ""))
        return status, body
    finally:
        conn.close()


def _batch_totals(metrics: bytes) -> tuple[float, float]:
    total = count = 0.0
    for line in metrics.decode(errors="replace").splitlines():
        if line.startswith("fsanet_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("fsanet_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


async def check_ready(host: str, port: int, timeout_s: float) -> None:
    """One line, before any load, when no server answers or it is not ready."""
    try:
        status, _ = await asyncio.wait_for(_get(host, port, "/readyz"), timeout_s)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
        raise FsanetError(f"no server answers at {host}:{port} ({e or type(e).__name__})") from None
    if status != 200:
        raise FsanetError(f"the server at {host}:{port} is not ready (/readyz answered {status})")


async def _run(
    url: str,
    bodies: list[bytes],
    content_type: str,
    crops_per_request: int | None,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    timeout_s: float,
    warmup_s: float,
) -> LoadReport:
    host, port, path = loopback_target(url)
    await check_ready(host, port, timeout_s)
    requests = [_request_bytes(host, port, "POST", path, b, content_type) for b in bodies]

    loop = asyncio.get_running_loop()
    measuring = False
    stop_at = loop.time() + warmup_s + duration_s
    issued = 0
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def client(index: int) -> None:
        nonlocal issued
        conn: _Connection | None = None
        k = index
        while loop.time() < stop_at and issued < max_requests:
            counted = measuring
            if counted:
                issued += 1
            data = requests[k % len(requests)]
            k += concurrency
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await _Connection.open(host, port)
                async with asyncio.timeout(timeout_s):
                    status, _, close = await conn.request(data)
                key = str(status)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                key, close = type(e).__name__, True
            if counted:
                statuses[key] += 1
                if key == "200":
                    latencies.append((time.perf_counter() - start) * 1000)
            if close and conn is not None:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    tasks = [asyncio.ensure_future(client(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup_s)  # connections open, the server's queue reaches steady state
    _, before = await _get(host, port, "/metrics")
    measuring = True
    start = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    _, after = await _get(host, port, "/metrics")
    (s0, c0), (s1, c1) = _batch_totals(before), _batch_totals(after)
    ok = statuses.get("200", 0)
    return LoadReport(
        url=f"http://{host}:{port}{path}",
        concurrency=concurrency,
        crops_per_request=crops_per_request,
        duration_s=elapsed,
        ok=ok,
        errors=sum(statuses.values()) - ok,
        statuses=dict(statuses),
        latencies_ms=latencies,
        mean_batch=(s1 - s0) / (c1 - c0) if c1 > c0 else None,
    )


def run_load(
    url: str,
    bodies: list[bytes],
    *,
    content_type: str = "application/x-npy",
    crops_per_request: int | None = 1,
    concurrency: int = 32,
    duration_s: float = 30.0,
    max_requests: int = 1_000_000,
    timeout_s: float = 30.0,
    warmup_s: float = 2.0,
) -> LoadReport:
    """POST `bodies` (cycled) to `url` from `concurrency` clients for `duration_s` seconds.

    Bounded: at most `max_requests` measured requests and `duration_s` (plus the warm-up),
    both capped; loopback targets only.
    """
    if not bodies:
        raise FsanetError("the load tool needs at least one request body")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise FsanetError(f"duration must lie in (0, {MAX_DURATION_S:g}] s, got {duration_s:g}")
    if not 1 <= max_requests <= MAX_REQUESTS:
        raise FsanetError(f"requests must lie in [1, {MAX_REQUESTS}], got {max_requests}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise FsanetError(f"concurrency must lie in [1, {MAX_CONCURRENCY}], got {concurrency}")
    if not 0 <= warmup_s <= 60:
        raise FsanetError(f"warm-up must lie in [0, 60] s, got {warmup_s:g}")
    return asyncio.run(
        _run(
            url,
            bodies,
            content_type,
            crops_per_request,
            concurrency,
            duration_s,
            max_requests,
            timeout_s,
            warmup_s,
        )
    )


def crop_bodies(crops: np.ndarray, per_request: int, count: int = 64) -> list[bytes]:
    """`count` different .npy bodies of `per_request` crops each, cut from `crops`."""
    bodies = []
    for i in range(count):
        idx = [(i * per_request + j) % len(crops) for j in range(per_request)]
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(crops[idx]), allow_pickle=False)
        bodies.append(buffer.getvalue())
    return bodies

"""`fsanet loadtest --stream N`: N WebSocket streams of a clip's frames, each sent at a fixed
rate like a camera (whether or not the answers keep up), on loopback only.

Each stream sends the clip's frames (JPEG, letterboxed to a camera's size if asked) at `fps`
from its own starting frame, and reads the answers as they come: the round trip of each
answered frame, the frames the server skipped (it poses the newest), the error answers, and
the streams that failed. Frames sent during the warm-up are not measured.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.core.errors import FsanetError
from fsanet.deploy.serve.loadtest import MAX_DURATION_S, _get, check_ready, loopback_target

MAX_STREAMS = 256
MAX_FRAMES = 900  # frames read from the clip (then it loops)


@dataclass
class StreamReport:
    """What N streams measured (`__str__` for people, `to_dict` for JSON)."""

    url: str
    clip: str
    streams: int
    fps: float
    size: tuple[int, int]
    duration_s: float
    sent: int = 0
    answered: int = 0
    skipped: int = 0
    errors: int = 0
    faces: int = 0
    failures: list[str] = field(default_factory=list)  # "stream i: why"
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    server_ms: list[float] = field(default_factory=list, repr=False)
    per_stream: list[int] = field(default_factory=list)  # frames answered, each stream
    memory_peak: float | None = None  # bytes: the server's most reserved at once
    memory_budget: float | None = None

    def percentile(self, values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    def fps_answered(self) -> tuple[float, float]:
        """(mean, slowest) frames answered per second per stream."""
        rates = [n / self.duration_s for n in self.per_stream] or [0.0]
        return float(np.mean(rates)), float(min(rates))

    def to_dict(self) -> dict[str, Any]:
        lat = {f"p{q}": round(self.percentile(self.latencies_ms, q), 2) for q in (50, 90, 99)}
        if self.latencies_ms:
            lat["max"] = round(max(self.latencies_ms), 2)
        mean, slowest = self.fps_answered()
        mb = 1024 * 1024
        return {
            "url": self.url,
            "clip": self.clip,
            "streams": self.streams,
            "fps": self.fps,
            "width": self.size[0],
            "height": self.size[1],
            "duration_s": round(self.duration_s, 2),
            "frames_sent": self.sent,
            "frames_answered": self.answered,
            "frames_skipped": self.skipped,
            "errors": self.errors,
            "failed_streams": len(self.failures),
            "failures": self.failures,
            "answered_fps_per_stream": round(mean, 2),
            "answered_fps_slowest_stream": round(slowest, 2),
            "faces_per_frame": round(self.faces / self.answered, 3) if self.answered else None,
            "latency_ms": lat,
            "server_ms_p50": round(self.percentile(self.server_ms, 50), 2),
            "server_memory_peak_mb": None
            if self.memory_peak is None
            else round(self.memory_peak / mb, 1),
            "server_memory_budget_mb": (
                None if self.memory_budget is None else round(self.memory_budget / mb, 1)
            ),
        }

    def __str__(self) -> str:
        mean, slowest = self.fps_answered()
        faces = self.faces / self.answered if self.answered else 0.0
        p = self.percentile
        lat = self.latencies_ms
        memory = ""
        if self.memory_peak is not None and self.memory_budget is not None:
            memory = (
                f"\n  server memory in flight: peak {self.memory_peak / 2**20:.0f} MB of"
                f" {self.memory_budget / 2**20:.0f} MB"
            )
        failed = "".join(f"\n  failed: {f}" for f in self.failures[:5])
        return (
            f"loadtest {self.url}: {self.streams} streams of {self.clip} at"
            f" {self.size[0]}x{self.size[1]}, {self.fps:g} frames/s each, {self.duration_s:.1f} s\n"
            f"  frames: {self.sent} sent, {self.answered} answered ({mean:.1f}/s per stream,"
            f" slowest {slowest:.1f}), {self.skipped} skipped, {self.errors} errors,"
            f" {len(self.failures)} streams failed\n"
            f"  faces per answered frame {faces:.2f}\n"
            f"  round trip ms: p50 {p(lat, 50):.1f}  p90 {p(lat, 90):.1f}  p99 {p(lat, 99):.1f};"
            f" in the server p50 {p(self.server_ms, 50):.1f}" + memory + failed
        )


def clip_frames(path: str | Path, size: tuple[int, int] | None = None) -> list[bytes]:
    """The clip's frames (at most MAX_FRAMES) as JPEGs, letterboxed into `size` (width,
    height) as a camera of that size would frame them."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FsanetError(f"cannot open {path} as a video")
    frames: list[bytes] = []
    try:
        while len(frames) < MAX_FRAMES:
            ok, image = capture.read()
            if not ok:
                break
            if size is not None:
                image = _letterbox(image, size)
            frames.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    finally:
        capture.release()
    if not frames:
        raise FsanetError(f"{path}: no frame could be decoded")
    return frames


def clip_fps(path: str | Path) -> float:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS) or 25.0)
    finally:
        capture.release()


def _letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    w, h = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    out = np.zeros((height, width, 3), np.uint8)
    x, y = (width - w) // 2, (height - h) // 2
    out[y : y + h, x : x + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return out


def _size(frame: bytes) -> tuple[int, int]:
    from fsanet.faces.vision.imageio import image_size

    return image_size(frame) or (0, 0)


async def _stream(
    i: int,
    url: str,
    frames: list[bytes],
    fps: float,
    start: float,
    measure_from: float,
    stop_at: float,
    timeout_s: float,
    report: StreamReport,
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    sent_at: OrderedDict[int, float] = OrderedDict()  # frames not yet answered or skipped
    answered = 0
    over = False  # nothing more to send
    done = asyncio.Event()  # ... and every frame sent is answered or skipped

    async def read(ws: Any) -> None:
        nonlocal answered
        async for text in ws:
            message = json.loads(text)
            index = message.get("frame", -1)
            when, skipped = None, 0
            while sent_at and next(iter(sent_at)) <= index:  # this one, and those skipped
                key, at = sent_at.popitem(last=False)
                if key == index:
                    when = at
                else:
                    skipped += at >= measure_from  # not those of the warm-up
            if when is not None and when >= measure_from:
                if message["type"] == "frame":
                    report.answered += 1
                    answered += 1
                    report.skipped += skipped
                    report.faces += len(message["faces"])
                    report.latencies_ms.append((time.perf_counter() - when) * 1000)
                    report.server_ms.append(message["server_ms"])
                else:
                    report.errors += 1
            if over and not sent_at:
                done.set()

    try:
        async with connect(url, open_timeout=timeout_s, max_size=None, ping_interval=None) as ws:
            reader = asyncio.ensure_future(read(ws))
            k = 0
            while (at := start + k / fps) < stop_at and not reader.done():
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                await ws.send(frames[(i * 7 + k) % len(frames)])  # streams start apart
                sent_at[k] = now = time.perf_counter()
                report.sent += now >= measure_from
                k += 1
            over = True
            if not sent_at:
                done.set()
            # The newest frame is always answered: wait for it (or for the reader to end).
            waiting = asyncio.ensure_future(done.wait())
            await asyncio.wait([reader, waiting], timeout=timeout_s, return_when="FIRST_COMPLETED")
            waiting.cancel()
            if not done.is_set():
                if reader.done():
                    reader.result()  # the server closed the stream: raises why
                    raise ConnectionError("the server closed the stream")
                report.failures.append(f"stream {i}: last frame unanswered in {timeout_s:g} s")
            reader.cancel()
    except ConnectionClosed as e:
        why = f"closed {e.rcvd.code} {e.rcvd.reason}" if e.rcvd else "connection lost"
        report.failures.append(f"stream {i}: {why}")
    except InvalidStatus as e:
        report.failures.append(f"stream {i}: refused with HTTP {e.response.status_code}")
    except (OSError, TimeoutError) as e:
        report.failures.append(f"stream {i}: {e or type(e).__name__}")
    report.per_stream.append(answered)


def _metric(metrics: bytes, name: str) -> float | None:
    for line in metrics.decode(errors="replace").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def _run(
    url: str,
    frames: list[bytes],
    clip: str,
    query: str,
    streams: int,
    fps: float,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
) -> StreamReport:
    host, port, _ = loopback_target(url)
    await check_ready(host, port, timeout_s)
    target = f"ws://{host if ':' not in host else f'[{host}]'}:{port}/v1/stream"
    target += f"?{query.lstrip('?')}" if query else ""
    report = StreamReport(target, clip, streams, fps, _size(frames[0]), duration_s)
    start = time.perf_counter() + 0.1
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    await asyncio.gather(
        *(
            _stream(i, target, frames, fps, start, measure_from, stop_at, timeout_s, report)
            for i in range(streams)
        )
    )
    status, metrics = await _get(host, port, "/metrics")
    if status == 200:
        report.memory_peak = _metric(metrics, "fsanet_memory_in_flight_peak_bytes")
        report.memory_budget = _metric(metrics, "fsanet_memory_budget_bytes")
    return report


def run_stream_load(
    url: str,
    frames: list[bytes],
    *,
    clip: str = "clip",
    query: str = "",
    streams: int = 1,
    fps: float = 30.0,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    timeout_s: float = 30.0,
) -> StreamReport:
    """`streams` concurrent streams sending `frames` (cycled) at `fps` each to the server at
    `url` (http://127.0.0.1:PORT) for `duration_s` after `warmup_s`; loopback only. `query`:
    the streams' options (`detect_every=3&smooth=0`)."""
    if not frames:
        raise FsanetError("the stream load needs at least one frame")
    if not 1 <= streams <= MAX_STREAMS:
        raise FsanetError(f"streams must lie in [1, {MAX_STREAMS}], got {streams}")
    if not 0 < fps <= 240:
        raise FsanetError(f"fps must lie in (0, 240], got {fps:g}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise FsanetError(f"duration must lie in (0, {MAX_DURATION_S:g}] s, got {duration_s:g}")
    if not 0 <= warmup_s <= 60:
        raise FsanetError(f"warm-up must lie in [0, 60] s, got {warmup_s:g}")
    return asyncio.run(
        _run(url, frames, clip, query, streams, fps, duration_s, warmup_s, timeout_s)
    )

"""One stream: its handshake (origin, key, a place), then frames in, the newest posed, answers out.

Three tasks per stream, on the event loop:
- receive reads every message as it comes (so the newest frame is always known): a frame is
  checked (rate limit, size), reserved and kept as the pending one, replacing one not yet
  started (counted as skipped); text messages change options; no frame for the idle timeout
  closes the stream (4408);
- pose takes the pending frame through the stream's video path (decode, detect, crop and
  track in the vision threads; the engine through the batcher, with the other streams' and
  requests' crops) and queues its answer;
- send sends the queued answers (at most `OUTBOX`); an answer the client does not take within
  the send timeout drops the stream.

Memory: while open, a stream holds its receive slot (the largest message it may send) from the
in-flight budget; each frame it keeps (the pending one; the one being posed, its decoded image
counted twice while decoding, then its crops) is reserved on top, as on the photo route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from fsanet.deploy.serve.extra import missing_serve_extra

try:  # the `serve` extra
    from fastapi import WebSocket
    from fastapi.responses import JSONResponse
    from starlette.websockets import WebSocketDisconnect
except ImportError as e:
    raise missing_serve_extra(e) from None

from fsanet.deploy.serve.batcher import Overloaded
from fsanet.deploy.serve.budget import OverBudget, Reservation
from fsanet.deploy.serve.limits import FACE_BYTES, HttpError, checked_image_size
from fsanet.deploy.serve.stream.access import (
    SUBPROTOCOL,
    Refused,
    StreamOptions,
    key_matches,
    origin_allowed,
    subprotocol_key,
)
from fsanet.deploy.serve.stream.frames import StreamFaces, error_answer, frame_answer
from fsanet.deploy.serve.stream.transport import CONTROL_BYTES, TRANSPORT, Controls

if TYPE_CHECKING:
    from fsanet.deploy.serve.ratelimit import TokenBuckets
    from fsanet.deploy.serve.service import PoseService

log = logging.getLogger("uvicorn.error")
T = TypeVar("T")

OUTBOX = 8  # answers waiting to be sent; past it posing waits (and newer frames are skipped)
SLACK = 1 << 20  # a frame up to this much over --max-body-mb is read and refused with 413
# Why a stream ended, for fsanet_streams_closed_total, by close code.
ENDS = {4401: "unauthorized", 4408: "idle", 1008: "protocol", 1009: "protocol", 1013: "full"}


class _Gone(Exception):
    """The client closed the stream, or the server is shutting down (1012)."""


class _Stalled(Exception):
    """The client did not take an answer within the send timeout."""


def receive_slot(max_body_bytes: int) -> int:
    """The largest message an admitted stream may send, reserved while it is open."""
    return max_body_bytes + SLACK


async def serve_stream(ws: WebSocket, service: PoseService, buckets: TokenBuckets | None) -> None:
    """`WS /v1/stream`, from the handshake to the last answer."""
    config, metrics = service.config, service.metrics
    secure = ws.scope.get("scheme") == "wss"
    given, host = ws.headers.get("origin"), ws.headers.get("host")
    if not origin_allowed(given, host, secure, config.allowed_origins):
        metrics.streams_closed.inc(reason="origin")
        await _deny(ws, 403, "this page's origin may not open streams (see --allowed-origins)")
        return
    if service.estimator is None:
        metrics.streams_closed.inc(reason="unavailable")
        await _deny(ws, 503, "streams need the face detector in this process")
        return
    offered = list(ws.scope.get("subprotocols") or [])
    await ws.accept(SUBPROTOCOL if SUBPROTOCOL in offered else None)
    controls: Controls | None = ws.scope.get(TRANSPORT)
    slot = receive_slot(config.limits.max_body_bytes)
    end = "client"
    try:
        options = StreamOptions(config.video.detect_every).from_query(ws.scope["query_string"])
        if config.api_key is not None:
            await _authenticate(ws, offered, config.api_key, config.header_timeout_s)
        if service.streams >= config.max_streams:
            raise Refused(1013, "too many streams")
        if not service.budget.take_now(slot):
            raise Refused(1013, "server busy: no memory for another stream")
        service.streams += 1
        try:
            if controls is not None:
                controls.limit(slot)
            await Stream(ws, service, controls, options, buckets).run()
        finally:
            service.streams -= 1
            service.budget.release(slot)
    except Refused as e:
        end = ENDS.get(e.code, "error")
        await _close(ws, controls, e.code, e.reason, config.stream_send_timeout_s)
    except _Gone:
        end = "client"
    except _Stalled:
        end = "send_timeout"
        if controls is not None:
            controls.abort()
    except Exception:  # a bug: this stream ends, never the server
        end = "error"
        log.exception("stream failed")
        await _close(ws, controls, 1011, "internal error", config.stream_send_timeout_s)
    finally:
        metrics.streams_closed.inc(reason=end)


async def _deny(ws: WebSocket, status: int, message: str) -> None:
    """An HTTP answer instead of the handshake (where the server can send one; else 403)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse({"error": message, "status": status}, status))
    else:
        await ws.close()


async def _authenticate(ws: WebSocket, offered: list[str], key: str, wait_s: float) -> None:
    """The key of a `bearer.<KEY>` subprotocol, else of a first message `{"type": "auth",
    "key": ...}` within `wait_s`; Refused (4401) otherwise. Never logged."""
    given = subprotocol_key(offered)
    if given is not None:
        if not key_matches(given, key):
            raise Refused(4401, "invalid API key")
        return
    try:
        async with asyncio.timeout(wait_s):
            message = await ws.receive()
    except TimeoutError:
        raise Refused(4401, "invalid API key") from None
    if message["type"] == "websocket.disconnect":
        raise _Gone
    text = message.get("text")
    try:
        doc = json.loads(text) if text is not None and len(text) <= CONTROL_BYTES else None
    except ValueError:
        doc = None
    auth = isinstance(doc, dict) and doc.get("type") == "auth"
    if not (auth and key_matches(doc.get("key"), key)):
        raise Refused(4401, "invalid API key")


async def _close(
    ws: WebSocket, controls: Controls | None, code: int, reason: str, wait_s: float
) -> None:
    """Close with `code`; a client that does not take the close frame is dropped."""
    try:
        async with asyncio.timeout(wait_s):
            await ws.close(code, reason.encode()[:123].decode(errors="ignore"))
    except (TimeoutError, WebSocketDisconnect, RuntimeError):
        if controls is not None:
            controls.abort()


@dataclass
class _Frame:
    index: int  # the client's count of the frames it sent, from 0
    data: bytes
    arrived: float  # perf_counter() on arrival: server_ms and latency count from here
    time: float  # seconds since the stream started: the records' time, and smoothing's
    options: StreamOptions  # as they were when the frame arrived
    held: Reservation


class Stream:
    """An admitted stream's three tasks (see the module doc)."""

    def __init__(
        self,
        ws: WebSocket,
        service: PoseService,
        controls: Controls | None,
        options: StreamOptions,
        buckets: TokenBuckets | None,
    ) -> None:
        assert service.estimator is not None
        self.ws, self.service, self.controls = ws, service, controls
        self.config, self.limits = service.config, service.limits
        self.metrics = service.metrics
        self.buckets = buckets
        client = ws.scope.get("client")
        self.client = client[0] if client else "?"
        self.options = options
        self.faces = StreamFaces(
            service.estimator, self.config.video, options, self.limits.max_crops
        )
        self.started = time.perf_counter()
        self.active = asyncio.get_running_loop().time()  # the last frame received or answer sent
        self.posing = False
        self.received = 0  # frames received (the next frame's index)
        self.skipped = 0  # frames replaced before posing, since the last answer
        self.pending: _Frame | None = None
        self.ready = asyncio.Event()
        self.outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX)

    async def run(self) -> None:
        """Until one task ends the stream (its exception says how)."""
        tasks = [
            asyncio.ensure_future(self._receive()),
            asyncio.ensure_future(self._pose()),
            asyncio.ensure_future(self._send()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended the stream
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.pending is not None:
                self.pending.held.shrink(self.pending.held.nbytes)
                self.pending = None

    # receive ------------------------------------------------------------------------------

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        idle_s = self.config.stream_idle_s
        while True:
            # Idle: no frame for idle_s since the last frame or answer, and none in the works
            # (a client waiting for a slow answer is not idle).
            deadline = self.active + idle_s
            if self.posing or self.pending is not None:
                deadline = max(deadline, loop.time() + idle_s)
            try:
                async with asyncio.timeout_at(deadline):
                    message = await self.ws.receive()
            except TimeoutError:
                busy = self.posing or self.pending is not None
                if busy or loop.time() < self.active + idle_s:
                    continue
                raise Refused(4408, f"idle stream: no frame for {idle_s:g} s") from None
            if message["type"] == "websocket.disconnect":
                raise _Gone
            data = message.get("bytes")
            if data is not None:
                self.active = loop.time()
                await self._frame(data)
            else:
                self._text(message.get("text") or "")

    async def _frame(self, data: bytes) -> None:
        index, arrived = self.received, time.perf_counter()
        self.received += 1
        if self.buckets is not None and self.buckets.take(self.client) > 0:
            self.metrics.rejected.inc(reason="rate_limited")
            await self._refuse(index, 429, "too many frames from this client (rate limit)")
            return
        most = self.limits.max_body_bytes
        if len(data) > most:
            await self._refuse(index, 413, f"the frame is {len(data)} bytes, the limit is {most}")
            return
        try:
            await self.service.budget.acquire(len(data))
        except OverBudget as e:
            await self._refuse(index, e.status, str(e))
            return
        held = Reservation(self.service.budget, len(data))
        frame = _Frame(index, data, arrived, arrived - self.started, self.options, held)
        if self.pending is not None:  # not started yet: the newer frame goes instead
            self.pending.held.shrink(self.pending.held.nbytes)
            self.skipped += 1
            self.metrics.stream_skipped.inc()
        self.pending = frame
        self.ready.set()

    def _text(self, text: str) -> None:
        if len(text) > CONTROL_BYTES:
            raise Refused(1009, f"text messages are at most {CONTROL_BYTES} bytes")
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise Refused(1008, "text messages must be JSON objects")
        kind = message.get("type")
        if kind == "options":
            self.options = self.options.from_message(message)
        elif kind != "auth":  # a key sent again (or to a server without one): nothing to do
            raise Refused(1008, f"unknown message type {str(kind)[:20]!r} (options, auth)")

    async def _refuse(self, index: int, status: int, message: str) -> None:
        self.metrics.stream_errors.inc(status=str(status))
        await self.outbox.put(error_answer(index, status, message))

    # pose ---------------------------------------------------------------------------------

    async def _pose(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            frame, self.pending = self.pending, None
            if frame is None:
                continue
            skipped, self.skipped = self.skipped, 0
            self.posing = True
            try:
                answer = await self._answer(frame, skipped)
            except (HttpError, OverBudget) as e:
                self.skipped += skipped  # said in the next answer
                status = e.status
                message = e.message if isinstance(e, HttpError) else str(e)
                self.metrics.stream_errors.inc(status=str(status))
                answer = error_answer(frame.index, status, message)
            finally:
                frame.held.shrink(frame.held.nbytes)
            await self.outbox.put(answer)
            self.posing = False  # the answer waits in the outbox: sent, it resets `active`

    async def _answer(self, frame: _Frame, skipped: int) -> str:
        limits, faces, held = self.limits, self.faces, frame.held
        width, height = await self._off(checked_image_size, frame.data, limits)
        image = width * height * 3
        # As on the photo route: the decoder holds a second full-size buffer at its peak.
        await held.resize(len(frame.data) + 2 * image)
        faces.apply(frame.options)
        video = await self._off(faces.detect, frame.data, frame.time, frame.arrived, limits)
        frame.data = b""
        await held.resize(image + faces.expected_faces(video) * FACE_BYTES)
        crops = await self._off(faces.prepare, video)
        held.shrink(held.nbytes - len(crops) * FACE_BYTES)  # the picture is gone
        angles = await self._angles(crops) if len(crops) else None
        found = faces.finish(video, angles)
        seconds = time.perf_counter() - frame.arrived
        self.metrics.stream_frames.inc()
        self.metrics.stream_latency.observe(seconds)
        return frame_answer(
            frame.index,
            frame.time,
            skipped,
            found,
            rotation=frame.options.rotation,
            server_ms=seconds * 1000,
            size=(width, height),
        )

    async def _off(self, job: Callable[..., T], *args: Any) -> T:
        """`job` in a vision thread. Cancelled (the stream ends), it still waits for the
        thread: the frame's memory is given back only once nothing uses it."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.service.vision, job, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    async def _angles(self, crops: np.ndarray) -> np.ndarray:
        wait_s = self.limits.request_timeout_s
        try:
            async with asyncio.timeout(wait_s):
                angles = await self.service.batcher.submit(crops, wait=False)
        except TimeoutError:
            raise HttpError(503, f"no result within {wait_s:g} s (server overloaded)") from None
        except Overloaded as e:
            raise HttpError(503, str(e)) from None
        if not np.isfinite(angles).all():  # the input was checked: the engine's fault
            log.error("stream: the engine returned non-finite angles")
            raise HttpError(500, "internal error: non-finite angles")
        return angles

    # send ---------------------------------------------------------------------------------

    async def _send(self) -> None:
        wait_s = self.config.stream_send_timeout_s
        while True:
            text = await self.outbox.get()
            try:
                async with asyncio.timeout(wait_s):
                    await self.ws.send_text(text)
            except TimeoutError:
                raise _Stalled from None
            except WebSocketDisconnect:
                raise _Gone from None
            self.active = asyncio.get_running_loop().time()

"""The HTTP service: FastAPI routes over one engine, a dynamic batcher and a face detector.

Routes: `POST /v1/pose` (an image -> faces), `POST /v1/pose/crops` (64x64 crops -> angles),
`GET /healthz`, `GET /readyz`, `GET /metrics`, and the OpenAPI docs (`/docs`). Every error
is a JSON object `{"error": message, "status": code}`; no input can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fsanet.backends.base import available_cpus
from fsanet.errors import FsanetError

try:  # the `serve` extra; without it, one line telling how to install it
    import python_multipart  # noqa: F401  (Starlette parses multipart bodies with it)
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as e:
    raise FsanetError(
        f"fsanet serve needs the '{e.name}' package: pip install 'fsanet[serve]'"
    ) from None

from fsanet.serve.batcher import DynamicBatcher, Overloaded
from fsanet.serve.limits import (
    IMAGE_TYPES,
    NPY_TYPES,
    HttpError,
    Limits,
    check_crops,
    decode_image,
    media_type,
    parse_crops_json,
    parse_npy,
    read_body,
)
from fsanet.serve.metrics import ServeMetrics

if TYPE_CHECKING:
    from fsanet.engine import PoseEngine
    from fsanet.predict import HeadPoseEstimator

ENDPOINTS = ("/v1/pose", "/v1/pose/crops", "/healthz", "/readyz", "/metrics")
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer"


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    graceful_timeout_s: int = 30  # seconds; how long shutdown waits for requests in flight
    access_log: bool = False

    def __post_init__(self) -> None:
        lim = self.limits
        problems = [
            f"{name} must be positive, got {value:g}"
            for name, value in (
                ("max batch", self.max_batch),
                ("body limit", lim.max_body_bytes),
                ("pixel limit", lim.max_pixels),
                ("crops per request", lim.max_crops),
                ("queue limit", lim.max_queue),
                ("body timeout", lim.body_timeout_s),
                ("request timeout", lim.request_timeout_s),
            )
            if value <= 0
        ]
        if self.max_wait_ms < 0:
            problems.append(f"max wait must be 0 or more, got {self.max_wait_ms:g} ms")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must lie in [0, 65535], got {self.port}")
        if problems:
            raise FsanetError("; ".join(problems))


class _ClientGone(Exception):
    pass


class PoseService:
    """The state behind the routes: engine, batcher, detector, metrics."""

    def __init__(
        self,
        engine: PoseEngine,
        config: ServeConfig,
        estimator: HeadPoseEstimator | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.limits = config.limits
        self.estimator = estimator
        self.in_flight = 0
        self.draining = False
        self.batcher = DynamicBatcher(
            self._infer,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.limits.max_queue,
        )
        self.metrics = ServeMetrics(lambda: self.batcher.queue_depth, lambda: self.in_flight)
        self.batcher.metrics = self.metrics
        # Detection and decoding are CPU work too: off the event loop, on every core (the
        # YuNet detector keeps one OpenCV detector per thread).
        self.vision = ThreadPoolExecutor(available_cpus(), thread_name_prefix="fsanet-vision")

    def _infer(self, crops: np.ndarray) -> np.ndarray:
        return np.asarray(self.engine(crops), np.float64)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        self.draining = True
        await self.batcher.stop()
        self.vision.shutdown(wait=True)

    async def angles(self, request: Request, crops: np.ndarray) -> np.ndarray:
        """Run crops through the batcher; 503 on timeout or overload, `_ClientGone` if the
        client disconnects first (its crops are then dropped from the queue)."""
        result = asyncio.ensure_future(self.batcher.submit(crops))
        gone = asyncio.ensure_future(_disconnected(request))
        done, _ = await asyncio.wait(
            {result, gone},
            timeout=self.limits.request_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        gone.cancel()
        if result in done:
            return result.result()
        result.cancel()
        if gone in done:
            raise _ClientGone
        raise HttpError(
            503,
            f"no result within {self.limits.request_timeout_s:g} s (server overloaded)",
            {"Retry-After": "1"},
        )


async def _disconnected(request: Request) -> None:
    # After the body has been read, the next ASGI message is the disconnect (if any).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(request: Request, limits: Limits) -> bytes:
    return await read_body(request.stream(), request.headers.get("content-length"), limits)


async def _multipart_image(request: Request, body: bytes) -> bytes:
    """The file part of a multipart body (field `image`, or the only file sent)."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except StarletteHTTPException as e:
        raise HttpError(400, f"malformed multipart body: {e.detail}") from None
    except Exception as e:  # the multipart parser has several error types of its own
        raise HttpError(400, f"malformed multipart body ({type(e).__name__})") from None
    try:
        part = form.get("image")
        if part is None or isinstance(part, str):
            files = [v for _, v in form.multi_items() if not isinstance(v, str)]
            part = files[0] if files else None
        if part is None or isinstance(part, str):
            raise HttpError(400, "the multipart body holds no file (send it as field 'image')")
        return await part.read()
    finally:
        await form.close()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status, headers=headers)


class _Observe:
    """Counts every request by endpoint and status, and times it (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, service: PoseService) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.service.in_flight += 1
        try:
            await self.app(scope, receive, observe_send)
        finally:
            self.service.in_flight -= 1
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            metrics = self.service.metrics
            metrics.requests.inc(endpoint=endpoint, status=str(status))
            metrics.latency.observe(time.perf_counter() - start, endpoint=endpoint)


def _body_doc(*types: str, description: str) -> dict[str, Any]:
    content: dict[str, Any] = {t: {"schema": {"type": "string", "format": "binary"}} for t in types}
    if "application/json" in types:
        content["application/json"] = {
            "schema": {
                "type": "object",
                "properties": {"crops": {"type": "array", "description": "N x 64 x 64 x 3"}},
                "required": ["crops"],
            }
        }
    if "multipart/form-data" in types:
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        }
    return {"requestBody": {"required": True, "description": description, "content": content}}


def create_app(
    engine: PoseEngine, config: ServeConfig, estimator: HeadPoseEstimator | None = None
) -> FastAPI:
    """The ASGI app. `estimator` (detector + crop settings) enables `POST /v1/pose`."""
    service = PoseService(engine, config, estimator)
    limits = config.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()  # uvicorn calls this after requests in flight have finished

    app = FastAPI(
        title="fsanet",
        description="FSA-Net head pose over HTTP, with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> Response:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> Response:
        return _error(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(_ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: Exception) -> Response:
        return _error(CLIENT_CLOSED, "the client closed the connection")  # nobody reads it

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error ({type(exc).__name__})")

    @app.post(
        "/v1/pose/crops",
        summary="Angles for ready 64x64 BGR crops",
        openapi_extra=_body_doc(
            "application/x-npy",
            "application/json",
            description="N x 64 x 64 x 3 BGR crops, uint8 or float32 0-255: an .npy file "
            '(application/x-npy) or {"crops": nested lists} (application/json).',
        ),
    )
    async def pose_crops(request: Request) -> Response:
        kind = media_type(request.headers.get("content-type"))
        if kind not in (*NPY_TYPES, "application/json"):
            raise HttpError(415, f"send application/x-npy or application/json, not {kind!r}")
        body = await _body(request, limits)
        if kind in NPY_TYPES:
            crops = parse_npy(body)  # a header check and a zero-copy view: cheap
        else:  # megabytes of JSON take a while: not on the event loop
            crops = await asyncio.get_running_loop().run_in_executor(None, parse_crops_json, body)
        angles = await service.angles(request, check_crops(crops, limits))
        poses = [{"yaw": y, "pitch": p, "roll": r} for y, p, r in angles.tolist()]
        return JSONResponse({"model": engine.name, "count": len(poses), "poses": poses})

    @app.post(
        "/v1/pose",
        summary="Faces and their head pose in one image",
        openapi_extra=_body_doc(
            *IMAGE_TYPES,
            "multipart/form-data",
            description="A JPEG or PNG image: the raw body, or a multipart field 'image'.",
        ),
    )
    async def pose_image(request: Request) -> Response:
        if service.estimator is None:
            raise HttpError(503, "face detection is not loaded on this server")
        kind = media_type(request.headers.get("content-type"))
        if kind not in (*IMAGE_TYPES, "multipart/form-data"):
            raise HttpError(415, f"send image/jpeg, image/png or multipart/form-data, not {kind!r}")
        body = await _body(request, limits)
        data = await _multipart_image(request, body) if kind == "multipart/form-data" else body
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(service.vision, decode_image, data, limits)
        detections, crops = await loop.run_in_executor(service.vision, _detect, service, image)
        faces = []
        if detections:
            # All faces of the image go to the batcher as one submission.
            angles = await service.angles(request, crops.astype(np.float32))
            faces = _faces(detections, angles)
            service.metrics.faces.inc(len(faces))
        height, width = image.shape[:2]
        return JSONResponse(
            {
                "model": engine.name,
                "width": width,
                "height": height,
                "count": len(faces),
                "faces": [f.to_dict() for f in faces],
            }
        )

    @app.get("/healthz", summary="Liveness: the process and its batcher run")
    async def healthz() -> Response:
        if not service.batcher.running and not service.draining:
            return _error(503, "the batcher is not running")
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Readiness: the engine is loaded and requests are accepted")
    async def readyz() -> Response:
        if service.draining or not service.batcher.running:
            return _error(503, "not ready (starting or shutting down)")
        return JSONResponse(
            {
                "status": "ready",
                "model": engine.name,
                "variants": engine.variants,
                "faces": service.estimator is not None,
                "max_batch": config.max_batch,
                "max_wait_ms": config.max_wait_ms,
            }
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return PlainTextResponse(
            service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    app.add_middleware(_Observe, service=service)
    return app


def _detect(service: PoseService, image: np.ndarray) -> tuple[list[Any], np.ndarray]:
    from fsanet.vision.crop import crop_faces

    estimator = service.estimator
    assert estimator is not None
    # Best score first; keep at most `max_crops` faces so one image cannot flood the engine.
    detections = estimator.detector.detect(image)[: service.limits.max_crops]
    crops = crop_faces(image, detections, estimator.crop, estimator.margin, estimator.normalize)
    return detections, crops


def _faces(detections: list[Any], angles: np.ndarray) -> list[Any]:
    from fsanet.predict import faces_from

    return faces_from(detections, angles)


class _Server(uvicorn.Server):
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
) -> None:
    """Run the service until SIGINT/SIGTERM; shutdown lets requests in flight finish."""
    config = config or ServeConfig()
    engine.warm_up(config.max_batch)  # before listening: no request waits for it
    app = create_app(engine, config, estimator)
    sock = listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"fsanet serve: listening on http://{shown}:{port}", flush=True)
    print(
        f"  engine {engine.name}; max batch {config.max_batch}, max wait {config.max_wait_ms:g} ms;"
        f" faces {'on' if estimator is not None else 'off'}",
        file=sys.stderr,
        flush=True,
    )
    server = _Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=config.access_log,
            timeout_graceful_shutdown=config.graceful_timeout_s,
            timeout_keep_alive=5,
        )
    )
    server.run(sockets=[sock])
    print("fsanet serve: stopped", file=sys.stderr, flush=True)

"""The HTTP service: FastAPI routes over one engine, a dynamic batcher and a face detector.

Routes: `POST /v1/pose` (an image -> faces), `POST /v1/pose/crops` (64x64 crops -> angles),
`WS /v1/stream` (camera frames -> tracked faces: fsanet.deploy.serve.stream), `GET /healthz`,
`GET /readyz`, `GET /metrics`, and the OpenAPI docs (`/docs`). Every error is a JSON object
`{"error": message, "status": code}`; no input can stop the server.
"""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from fsanet.deploy.serve.config import Limits, ServeConfig
from fsanet.deploy.serve.extra import missing_serve_extra

try:  # the `serve` extra; without it, one line telling how to install it
    import python_multipart  # noqa: F401  (Starlette parses multipart bodies with it)
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as e:
    raise missing_serve_extra(e) from None

from fsanet.deploy.serve.auth import BearerAuth
from fsanet.deploy.serve.batcher import Overloaded
from fsanet.deploy.serve.budget import OverBudget
from fsanet.deploy.serve.limits import (
    CROP_BYTES,
    FACE_BYTES,
    IMAGE_TYPES,
    NPY_TYPES,
    HttpError,
    check_crops,
    checked_image_size,
    decode_image,
    media_type,
    parse_crops_json,
    parse_npy,
    read_body,
)
from fsanet.deploy.serve.openapi import (
    CROPS_ANSWER,
    HEALTH_ANSWER,
    IMAGE_ANSWER,
    READY_ANSWER,
    body,
    responses,
)
from fsanet.deploy.serve.protocol import (
    PARSER_ERROR,
)
from fsanet.deploy.serve.ratelimit import RateLimit, TokenBuckets
from fsanet.deploy.serve.service import (
    REQUEST_ID,
    ClientGone,
    Detected,
    FaceCropper,
    Offload,
    PoseService,
)
from fsanet.deploy.serve.stream.session import serve_stream
from fsanet.deploy.serve.ui import PageFiles, read_page

if TYPE_CHECKING:
    from fsanet.engine.pose import PoseEngine
    from fsanet.faces.estimator import HeadPoseEstimator

ENDPOINTS = ("/v1/pose", "/v1/pose/crops", "/healthz", "/readyz", "/metrics")
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer"


async def _body(request: Request, limits: Limits) -> bytes:
    return await read_body(request.stream(), request.headers.get("content-length"), limits)


def _multipart_image(scope: Scope, body: bytes) -> bytes:
    """The file part of a multipart body (field `image`, or the only file sent). Parsing a
    16 MB body takes ~50 ms of CPU: run in a worker thread, on a loop of its own, so the
    server's event loop stays free."""
    return asyncio.run(_parse_multipart(scope, body))


async def _parse_multipart(scope: Scope, body: bytes) -> bytes:
    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=1, max_fields=8)
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
        rid = secrets.token_hex(6)
        scope[REQUEST_ID] = rid

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        self.service.in_flight += 1
        try:
            await self.app(scope, receive, observe_send)
        finally:
            self.service.in_flight -= 1
            if scope.get(PARSER_ERROR):  # a malformed body: the client got the parser's 400
                status = 400
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            metrics = self.service.metrics
            metrics.requests.inc(endpoint=endpoint, status=str(status))
            metrics.latency.observe(time.perf_counter() - start, endpoint=endpoint)


def create_app(
    engine: PoseEngine,
    config: ServeConfig,
    estimator: HeadPoseEstimator | None = None,
    remote: Offload | None = None,
) -> FastAPI:
    """The ASGI app. `estimator` (detector + crop settings) enables `POST /v1/pose`; `remote`
    runs the engine and the detector elsewhere (see `Offload`)."""
    service = PoseService(engine, config, estimator, remote)
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
        docs_url="/docs" if config.docs else None,
        redoc_url="/redoc" if config.docs else None,
    )
    app.state.service = service

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> Response:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> Response:
        return _error(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(OverBudget)
    async def _over_budget(request: Request, exc: OverBudget) -> Response:
        return _error(exc.status, str(exc), {"Retry-After": "1"} if exc.status == 503 else None)

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: Exception) -> Response:
        return _error(CLIENT_CLOSED, "the client closed the connection")  # nobody reads it

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        rid = request.scope.get(REQUEST_ID, "?")
        return _error(500, f"internal error ({type(exc).__name__}, request {rid})")

    @app.post(
        "/v1/pose/crops",
        summary="Angles for ready 64x64 BGR crops",
        responses=responses({"application/json": CROPS_ANSWER}, post=True),
        openapi_extra=body(
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
        loop = asyncio.get_running_loop()
        # What the request will hold: its body and its float32 crops (at most `max_crops`).
        crops_bytes = limits.max_crops * CROP_BYTES
        if kind in NPY_TYPES:
            crops = parse_npy(body)  # a header check and a zero-copy view: cheap
            cost = len(body) + min(crops.size * 4, crops_bytes)
            job = functools.partial(check_crops, crops, limits)  # scans every pixel
            executor = service.vision
        else:  # each JSON crop takes at least 24 KiB (12288 numbers and their separators)
            cost = len(body) + min((len(body) // 24576 + 1) * CROP_BYTES, crops_bytes)
            job = functools.partial(_parse_crops_json, body, limits)
            executor = service.parsing
        async with service.budget.reserve(cost):
            batch = await loop.run_in_executor(executor, job)
            angles = await service.angles(request, batch)
        poses = [{"yaw": y, "pitch": p, "roll": r} for y, p, r in angles.tolist()]
        return JSONResponse({"model": engine.name, "count": len(poses), "poses": poses})

    @app.post(
        "/v1/pose",
        summary="Faces and their head pose in one image",
        responses=responses({"application/json": IMAGE_ANSWER}, post=True),
        openapi_extra=body(
            *IMAGE_TYPES,
            "multipart/form-data",
            description="A JPEG or PNG image: the raw body, or a multipart field 'image'.",
        ),
    )
    async def pose_image(request: Request) -> Response:
        if not service.faces:
            raise HttpError(503, "face detection is not loaded on this server")
        kind = media_type(request.headers.get("content-type"))
        if kind not in (*IMAGE_TYPES, "multipart/form-data"):
            raise HttpError(415, f"send image/jpeg, image/png or multipart/form-data, not {kind!r}")
        body = await _body(request, limits)
        loop = asyncio.get_running_loop()
        data = body
        if kind == "multipart/form-data":
            data = await loop.run_in_executor(None, _multipart_image, request.scope, body)
        # The header walk of a JPEG can take a while for hostile ones: not on the event loop.
        width, height = await loop.run_in_executor(service.vision, checked_image_size, data, limits)
        # Reserved step by step, each before its allocations: the body and the decoded image,
        # counted twice (OpenCV's decoder holds a second full-size buffer at its peak: +217 MB
        # for a 113 MB 7200x5500 JPEG); then the crops of the faces found, not of `max_crops`.
        image = width * height * 3
        async with service.budget.reserve(len(body) + 2 * image) as held:
            if service.remote is not None and service.remote.detect is not None:
                detections, crops, total = await service.remote.detect(data)
            else:
                assert service.estimator is not None
                decoded, detections, total = await loop.run_in_executor(
                    service.vision, decode_and_find, data, limits, service.estimator
                )
                # The image stays until its faces are cropped.
                await held.resize(len(body) + image + len(detections) * FACE_BYTES)
                crops = await loop.run_in_executor(
                    service.vision, crop_found, decoded, detections, service.estimator
                )
                del decoded
            await held.resize(len(body) + len(detections) * FACE_BYTES)
            faces = []
            if detections:
                # All faces of the image go to the batcher as one submission.
                angles = await service.angles(request, crops.astype(np.float32))
                faces = _faces(detections, angles)
                service.metrics.faces.inc(len(faces))
        return JSONResponse(
            {
                "model": engine.name,
                "width": width,
                "height": height,
                "count": len(faces),
                # Faces found; more than `count` when only the best `max_crops` were kept.
                "total": total,
                "truncated": total > len(faces),
                "faces": [f.to_dict() for f in faces],
            }
        )

    @app.get(
        "/healthz",
        summary="Liveness: the process and its batcher run",
        responses=responses({"application/json": HEALTH_ANSWER}, guarded=False),
    )
    async def healthz() -> Response:
        if not service.batcher.running and not service.draining:
            return _error(503, "the batcher is not running")
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        summary="Readiness: the engine is loaded and requests are accepted",
        responses=responses({"application/json": READY_ANSWER}, guarded=False),
    )
    async def readyz() -> Response:
        if service.draining or not service.batcher.running:
            return _error(503, "not ready (starting or shutting down)")
        return JSONResponse(
            {
                "status": "ready",
                "model": engine.name,
                "variants": engine.variants,
                "faces": service.faces,
                "max_batch": config.max_batch,
                "max_wait_ms": config.max_wait_ms,
            }
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses=responses({"text/plain": {"type": "string"}}),
    )
    async def metrics() -> Response:
        return PlainTextResponse(
            service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    buckets = None
    if config.rate_limit is not None:  # one bucket per client for requests and stream frames
        burst = config.rate_burst or max(1, math.ceil(config.rate_limit))
        buckets = TokenBuckets(config.rate_limit, burst)

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        # Camera frames in, one JSON answer per frame out (docs/SERVING.md, "Streams").
        await serve_stream(websocket, service, buckets)

    if config.api_key is not None:
        app.add_middleware(BearerAuth, api_key=config.api_key)
    if config.ui:  # outside auth (the page holds no secret), inside the rate limit
        app.add_middleware(PageFiles, page=read_page())
    if buckets is not None:  # outside auth: floods of wrong keys are limited too
        app.add_middleware(
            RateLimit,
            buckets=buckets,
            count=lambda: service.metrics.rejected.inc(reason="rate_limited"),
        )
    app.add_middleware(_Observe, service=service)  # outermost: counts 401s too
    return app


def _parse_crops_json(body: bytes, limits: Limits) -> np.ndarray:
    return check_crops(parse_crops_json(body, limits), limits)


def decode_and_detect(data: bytes, limits: Limits, estimator: FaceCropper) -> Detected:
    """One job: the decoded image never waits in a queue, and is freed when it returns.
    Returns the kept detections, their crops and how many faces were found."""
    image, detections, total = decode_and_find(data, limits, estimator)
    return detections, crop_found(image, detections, estimator), total


def decode_and_find(
    data: bytes, limits: Limits, estimator: FaceCropper
) -> tuple[np.ndarray, list[Any], int]:
    """The decoded image, the detections kept and how many faces were found."""
    image = decode_image(data, limits)
    # Best score first; keep at most `max_crops` faces so one image cannot flood the engine.
    found = estimator.detector.detect(image)
    return image, found[: limits.max_crops], len(found)


def crop_found(image: np.ndarray, detections: list[Any], estimator: FaceCropper) -> np.ndarray:
    from fsanet.faces.vision.crop import crop_faces

    return crop_faces(image, detections, estimator.crop, estimator.margin, estimator.normalize)


def _faces(detections: list[Any], angles: np.ndarray) -> list[Any]:
    from fsanet.faces.face import faces_from

    return faces_from(detections, angles)

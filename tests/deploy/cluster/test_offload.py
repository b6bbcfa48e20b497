"""The service with its engine and detector elsewhere (`Offload`, what `serve --ray` plugs in),
on fakes: several batches in flight, and the remote side's errors as the client sees them."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import httpx
import numpy as np

from fsanet.deploy.serve.app import create_app
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.limits import HttpError
from fsanet.deploy.serve.service import Offload

NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def crop(value: int) -> np.ndarray:
    return np.full((1, 64, 64, 3), value, np.uint8)


class FakeReplicas:
    """Angles = each crop's first pixel; counts the batches in flight at once."""

    def __init__(self, delay: float = 0.05, fail: HttpError | None = None) -> None:
        self.delay, self.fail = delay, fail
        self.in_flight = self.most = 0
        self.batches: list[int] = []

    async def infer(self, crops: np.ndarray) -> np.ndarray:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            self.batches.append(len(crops))
            return np.repeat(crops[:, 0, 0, :1], 3, axis=1).astype(np.float64)
        finally:
            self.in_flight -= 1

    async def detect(self, data: bytes):
        raise HttpError(400, "the image cannot be decoded (damaged or truncated)")


def serve(replicas: FakeReplicas, concurrency: int, faces: bool, requests) -> list:
    async def main() -> list:
        engine = SimpleNamespace(name="fake", variants=["a"])
        remote = Offload(replicas.infer, replicas.detect if faces else None, concurrency)
        app = create_app(engine, ServeConfig(max_batch=4, max_wait_ms=20), None, remote)
        service = app.state.service
        await service.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(*(request(client) for request in requests))
        finally:
            await service.stop()

    return asyncio.run(asyncio.wait_for(main(), 30))


def post_crop(value: int):
    return lambda client: client.post("/v1/pose/crops", content=npy(crop(value)), headers=NPY)


def test_batches_go_to_the_replicas_several_at_once_and_each_request_gets_its_own():
    replicas = FakeReplicas()
    answers = serve(replicas, 3, False, [post_crop(v) for v in range(24)])
    assert [a.json()["poses"][0]["yaw"] for a in answers] == list(range(24))
    assert replicas.most == 3  # never more batches in flight than asked
    assert max(replicas.batches) == 4 and sum(replicas.batches) == 24


def test_one_batch_at_a_time_when_concurrency_is_one():
    replicas = FakeReplicas(delay=0.01)
    serve(replicas, 1, False, [post_crop(v) for v in range(12)])
    assert replicas.most == 1


def test_a_lost_replica_is_a_json_503_with_retry_after():
    lost = HttpError(
        503, "a pose replica was lost while serving this request", {"Retry-After": "1"}
    )
    (answer,) = serve(FakeReplicas(fail=lost), 2, False, [post_crop(1)])
    assert answer.status_code == 503
    assert answer.json() == {"error": lost.message, "status": 503}
    assert answer.headers["retry-after"] == "1"


def test_the_remote_detector_answers_and_refuses_like_the_local_one():
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (8).to_bytes(4, "big") * 2 + bytes(20)
    headers = {"content-type": "image/png"}
    (refused,) = serve(
        FakeReplicas(), 1, True, [lambda c: c.post("/v1/pose", content=png, headers=headers)]
    )
    assert refused.json() == {
        "error": "the image cannot be decoded (damaged or truncated)",
        "status": 400,
    }
    (off,) = serve(
        FakeReplicas(), 1, False, [lambda c: c.post("/v1/pose", content=png, headers=headers)]
    )
    assert off.json() == {"error": "face detection is not loaded on this server", "status": 503}

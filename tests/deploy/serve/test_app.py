"""The real server over real HTTP on loopback: endpoints, bad input, batching, shutdown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from fsanet.assets.aflw2000 import Aflw2000
from fsanet.core.errors import FsanetError
from fsanet.deploy.serve.loadtest import run_load
from fsanet.engine.pose import PoseEngine

# Batches of different sizes may round differently inside ONNX Runtime (~1e-5 degrees):
# far below what tells one crop from another (degrees), so a mix-up still fails.
ATOL = 1e-3
CROPS = "/v1/pose/crops"
NPY = {"content-type": "application/x-npy"}


def raw_http(port: int, data: bytes, *, close_after: float | None = None) -> bytes:
    """Send raw bytes; return the answer, or b'' when `close_after` hangs up first."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        if close_after is not None:
            time.sleep(close_after)
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def jpeg_from_release(shared: Path, name: str = "image00002.jpg") -> bytes:
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        return z.read(f"AFLW2000/{name}")


@pytest.fixture(scope="module")
def crops(aflw2000: Aflw2000) -> np.ndarray:
    return aflw2000.images[:64]


# --- endpoints ---------------------------------------------------------------------------


def test_crops_npy_match_the_engine(server, crops, fusion_engine: PoseEngine):
    expected = fusion_engine(crops[:5])
    for batch in (crops[:5], crops[:5].astype(np.float32)):
        response = server.post_crops(batch)
        assert response.json()["count"] == 5
        assert np.allclose(server.angles(response), expected, atol=ATOL)
    single = server.post_crops(crops[0])  # one 64x64x3 crop without the batch axis
    assert np.allclose(server.angles(single), expected[:1], atol=ATOL)


def test_crops_json_matches_npy(server, crops):
    with server.client() as client:
        response = client.post(CROPS, json={"crops": crops[:2].tolist()})
    assert np.allclose(server.angles(response), server.angles(server.post_crops(crops[:2])))


def test_pose_image_raw_png_and_multipart_match_predict(server, shared, fusion_engine):
    from fsanet.faces.estimator import HeadPoseEstimator

    jpeg = jpeg_from_release(shared)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    expected = [f.to_dict() for f in HeadPoseEstimator(fusion_engine)(image)]
    assert len(expected) == 1
    png = cv2.imencode(".png", image)[1].tobytes()
    with server.client() as client:
        answers = [
            client.post("/v1/pose", content=jpeg, headers={"content-type": "image/jpeg"}),
            client.post("/v1/pose", content=png, headers={"content-type": "image/png"}),
            client.post("/v1/pose", files={"image": ("face.jpg", jpeg, "image/jpeg")}),
            client.post("/v1/pose", files={"upload": ("face.jpg", jpeg, "image/jpeg")}),
        ]
    for response in answers:
        assert response.status_code == 200, response.text
        data = response.json()
        assert (data["width"], data["height"], data["count"]) == (450, 450, 1)
        assert (data["total"], data["truncated"]) == (1, False)
        (face,) = data["faces"]
        assert set(face) == {"box", "score", "yaw", "pitch", "roll", "landmarks"}
        for key in ("yaw", "pitch", "roll", "score"):
            assert face[key] == pytest.approx(expected[0][key], abs=0.011)
        assert np.allclose(face["box"], expected[0]["box"], atol=0.11)


def test_more_faces_than_allowed_are_flagged(make_server, shared):
    """Past --max-crops faces, the best are kept and the answer says how many were found."""
    face = cv2.imdecode(np.frombuffer(jpeg_from_release(shared), np.uint8), cv2.IMREAD_COLOR)
    mosaic = np.vstack([np.hstack([face, face])] * 2)  # four faces
    srv = make_server("--max-crops", "2")
    body = cv2.imencode(".jpg", mosaic)[1].tobytes()
    with srv.client() as client:
        response = client.post("/v1/pose", content=body, headers={"content-type": "image/jpeg"})
    data = response.json()
    assert response.status_code == 200, data
    assert (data["count"], data["total"], data["truncated"]) == (2, 4, True)


def test_pose_image_without_faces(server):
    blank = cv2.imencode(".png", np.full((120, 160, 3), 128, np.uint8))[1].tobytes()
    with server.client() as client:
        response = client.post("/v1/pose", content=blank, headers={"content-type": "image/png"})
    assert response.status_code == 200
    assert response.json()["faces"] == [] and response.json()["count"] == 0


def test_health_ready_metrics_and_docs(server):
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["faces"] is True
        assert sorted(ready["variants"]) == ["capsule", "noS", "var"]
        metrics = client.get("/metrics")
        openapi = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "fsanet_requests_total",
        "fsanet_request_duration_seconds_bucket",
        "fsanet_batch_size_bucket",
        "fsanet_queue_depth",
        "fsanet_requests_in_flight",
    ):
        assert name in metrics.text
    assert {"/v1/pose", CROPS, "/healthz", "/readyz", "/metrics"} <= set(openapi["paths"])
    body = openapi["paths"][CROPS]["post"]["requestBody"]["content"]
    assert {"application/x-npy", "application/json"} <= set(body)
    assert docs.status_code == 404  # off by default (Swagger UI would need a CDN)


# --- bad input ---------------------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _bomb_png() -> bytes:
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


_GOOD = np.zeros((1, 64, 64, 3), np.uint8)
_NAN = np.zeros((1, 64, 64, 3), np.float32)
_NAN[0, 1, 2, 0] = np.nan
_INF = np.zeros((1, 64, 64, 3), np.float32)
_INF[0, 5, 5, 2] = np.inf
_GOOD_NPY = _npy_bytes(_GOOD)
_HUGE_NPY = _GOOD_NPY.replace(b"(1, 64, 64, 3)", b"(4611686018427387904, 4)")  # 2**62 x 4
_NEGATIVE_NPY = _GOOD_NPY.replace(b"(1, 64, 64, 3)", b"(-1, -1, 64, 64, 3)")
_UNTERMINATED_NPY = _GOOD_NPY[:10] + b"{'descr': '|u1',\n"
_BAD_JPEG = b"\xff\xd8\xff\xc0\0\x11" + b"\0" * 9  # a frame header, then no image data
_JPEG = cv2.imencode(".jpg", np.full((64, 64, 3), 200, np.uint8))[1].tobytes()
_MULTIPART = "multipart/form-data; boundary=xyz"

# (name, path, content type, body, expected status)
BAD_INPUTS: list[tuple[str, str, str, bytes, int]] = [
    ("crops-wrong-content-type", CROPS, "text/plain", b"hello", 415),
    ("crops-no-content-type", CROPS, "", _GOOD_NPY, 415),
    ("crops-empty-body", CROPS, "application/x-npy", b"", 400),
    ("crops-not-npy", CROPS, "application/x-npy", b"\x93NUMPY garbage", 400),
    ("crops-truncated-npy", CROPS, "application/x-npy", _GOOD_NPY[:-100], 400),
    ("crops-npy-header-lies", CROPS, "application/x-npy", _GOOD_NPY + b"extra", 400),
    ("crops-wrong-shape", CROPS, "application/x-npy", _npy_bytes(np.zeros((2, 32, 32, 3))), 422),
    ("crops-wrong-rank", CROPS, "application/x-npy", _npy_bytes(np.zeros((64, 64))), 422),
    ("crops-float64", CROPS, "application/x-npy", _npy_bytes(np.zeros((1, 64, 64, 3))), 422),
    ("crops-int16", CROPS, "application/x-npy", _npy_bytes(_GOOD.astype(np.int16)), 422),
    ("crops-nan", CROPS, "application/x-npy", _npy_bytes(_NAN), 422),
    ("crops-inf", CROPS, "application/x-npy", _npy_bytes(_INF), 422),
    ("crops-npy-2**62", CROPS, "application/x-npy", _HUGE_NPY, 400),
    ("crops-npy-negative-dims", CROPS, "application/x-npy", _NEGATIVE_NPY, 400),
    ("crops-npy-unterminated", CROPS, "application/x-npy", _UNTERMINATED_NPY, 400),
    ("crops-below-0", CROPS, "application/x-npy", _npy_bytes(_GOOD.astype(np.float32) - 1e6), 422),
    ("crops-3e38", CROPS, "application/x-npy", _npy_bytes(_GOOD.astype(np.float32) + 3e38), 422),
    ("crops-zero", CROPS, "application/x-npy", _npy_bytes(_GOOD[:0]), 422),
    ("crops-too-many", CROPS, "application/x-npy", _npy_bytes(np.repeat(_GOOD, 65, 0)), 413),
    ("json-malformed", CROPS, "application/json", b'{"crops": [1, 2', 400),
    ("json-no-crops", CROPS, "application/json", b'{"images": []}', 422),
    ("json-ragged", CROPS, "application/json", b'{"crops": [[1, 2], [3]]}', 422),
    ("json-strings", CROPS, "application/json", b'{"crops": [["a"]]}', 422),
    ("json-nan", CROPS, "application/json", b'{"crops": ' + b"[[[NaN]]]" + b"}", 422),
    ("json-deep", CROPS, "application/json", b"[" * 50_000 + b"]" * 50_000, 400),
    ("image-wrong-content-type", "/v1/pose", "application/x-npy", _JPEG, 415),
    ("image-gif", "/v1/pose", "image/jpeg", b"GIF89a" + b"\0" * 100, 415),
    ("image-corrupt-jpeg", "/v1/pose", "image/jpeg", _BAD_JPEG, 400),
    ("image-bomb", "/v1/pose", "image/png", _bomb_png(), 413),
    ("image-empty", "/v1/pose", "image/png", b"", 400),
    ("multipart-malformed", "/v1/pose", _MULTIPART, b"--xyz\r\nnonsense", 400),
    (
        "multipart-no-file",
        "/v1/pose",
        _MULTIPART,
        b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--xyz--\r\n',
        400,
    ),
]  # fmt: skip


def _send_bad(client: httpx.Client, path: str, kind: str, body: bytes) -> httpx.Response:
    headers = {"content-type": kind} if kind else {}
    return client.post(path, content=body, headers=headers)


@pytest.mark.parametrize(
    ("path", "kind", "body", "status"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_a_json_error(server, path, kind, body, status):
    with server.client() as client:
        response = _send_bad(client, path, kind, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["status"] == status and isinstance(error["error"], str) and error["error"]


def test_unknown_route_and_method_are_json_errors(server):
    with server.client() as client:
        assert client.get("/nope").json() == {"error": "Not Found", "status": 404}
        assert client.get(CROPS).status_code == 405
        assert client.get(CROPS).json()["status"] == 405


def test_body_limit_without_reading_it(server):
    # Content-Length over the 2 MiB limit: refused from the header alone.
    head = (
        f"POST {CROPS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = raw_http(server.port, head + b"\0" * 1000)
    assert status_of(answer) == 413 and b"larger than the limit" in answer


def test_body_limit_for_chunked_bodies(server):
    # No Content-Length: the server counts while reading and stops past the limit.
    chunk = b"\0" * 65536
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(40))
    head = (
        f"POST {CROPS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    answer = raw_http(server.port, head + body)
    assert status_of(answer) == 413


def test_slow_body_times_out(server):
    head = (
        f"POST {CROPS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        "Content-Length: 12416\r\n\r\n"
    ).encode()
    start = time.monotonic()
    answer = raw_http(server.port, head + _GOOD_NPY[:100])  # then nothing: the body stalls
    # A 408, not the client's own 15 s socket timeout (which raises); after the server's
    # --body-timeout of 1 s, not before.
    assert status_of(answer) == 408
    assert time.monotonic() - start >= 1.0


def test_client_gone_during_upload(server):
    before = server.metric('fsanet_requests_total{endpoint="/v1/pose/crops",status="499"}')
    head = (
        f"POST {CROPS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        "Content-Length: 12416\r\n\r\n"
    ).encode()
    raw_http(server.port, head + _GOOD_NPY[:100], close_after=0.2)
    _wait_for(
        lambda: (
            server.metric('fsanet_requests_total{endpoint="/v1/pose/crops",status="499"}')
            == before + 1
        )
    )


def test_healthz_after_the_barrage(server, crops):
    """Every bad input again, in parallel, then the server still answers correctly."""
    with ThreadPoolExecutor(8) as pool:

        def one(case: tuple[str, str, str, bytes, int]) -> int:
            with server.client() as client:
                return _send_bad(client, case[1], case[2], case[3]).status_code

        statuses = list(pool.map(one, BAD_INPUTS * 3))
    assert statuses == [case[4] for case in BAD_INPUTS] * 3
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
    assert server.post_crops(crops[:3]).status_code == 200
    assert server.metric('fsanet_requests_total{endpoint="/v1/pose/crops",status="500"}') == 0
    assert server.proc.poll() is None


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- batching under concurrency ------------------------------------------------------------


def test_concurrent_results_equal_single_results(server, crops):
    # Requests of 1 to 3 crops, each different.
    requests = [crops[i : i + 1 + i % 3] for i in range(48)]
    single = [server.angles(server.post_crops(r)) for r in requests]
    batches = server.metric("fsanet_batch_size_count")
    crops_run = server.metric("fsanet_batch_size_sum")

    def post(r: np.ndarray) -> np.ndarray:
        return server.angles(server.post_crops(r))

    with ThreadPoolExecutor(24) as pool:
        for _ in range(2):
            concurrent = list(pool.map(post, requests))
            for got, want in zip(concurrent, single, strict=True):
                assert got.shape == want.shape
                assert np.allclose(got, want, atol=ATOL)
    calls = server.metric("fsanet_batch_size_count") - batches
    run = server.metric("fsanet_batch_size_sum") - crops_run
    assert run == 2 * sum(len(r) for r in requests)
    assert calls < 2 * len(requests)  # requests were batched together


def test_timeout_gives_503(make_server, crops):
    srv = make_server("--no-faces", "--max-wait-ms", "3000", "--timeout", "0.3")
    batches = srv.metric("fsanet_batch_size_count")
    start = time.monotonic()
    response = srv.post_crops(crops[:1])
    took = time.monotonic() - start
    # Answered by the timeout, before its batch ran (ordering, not a time limit): no batch
    # has run yet when the 503 is in, and not before the 0.3 s.
    assert srv.metric("fsanet_batch_size_count") == batches
    assert response.status_code == 503 and "no result within" in response.json()["error"]
    assert response.headers["retry-after"] == "1"
    assert took >= 0.3
    with srv.client() as client:
        assert client.get("/healthz").status_code == 200


def test_full_queue_gives_503_and_client_gone_is_dropped(make_server, crops):
    srv = make_server("--no-faces", "--max-wait-ms", "3000", "--max-queue", "3")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(srv.post_crops, crops[:2])
        _wait_for(lambda: srv.metric("fsanet_queue_depth") == 2)
        refused = srv.post_crops(crops[:2])
        assert refused.status_code == 503 and "queue is full" in refused.json()["error"]
        # A client that hangs up while queued: its crop never reaches the engine.
        raw_http(
            srv.port,
            (
                f"POST {CROPS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                f"Content-Length: {len(_GOOD_NPY)}\r\n\r\n"
            ).encode()
            + _GOOD_NPY,
            close_after=0.3,
        )
        assert waiting.result().status_code == 200
    _wait_for(
        lambda: srv.metric('fsanet_requests_total{endpoint="/v1/pose/crops",status="499"}') == 1
    )
    assert srv.metric("fsanet_crops_total") == 2


def test_graceful_shutdown_drains_and_never_imports_tensorflow(make_server, crops, shared):
    srv = make_server("--max-wait-ms", "1500")
    with srv.client() as client:  # the image path too: detection must not pull TensorFlow in
        jpeg = jpeg_from_release(shared)
        assert client.post("/v1/pose", content=jpeg, headers={"content-type": "image/jpeg"})
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(srv.post_crops(crops[:4])))
    thread.start()
    _wait_for(lambda: srv.metric("fsanet_queue_depth") == 4)
    code, log = srv.stop()  # SIGTERM while the request waits in the queue
    thread.join(10)
    assert result and result[0].status_code == 200 and result[0].json()["count"] == 4
    assert code == 0, log
    assert "IMPORTED=\n" in log  # the probe's report: no tensorflow, tf2onnx or keras


# --- the command line --------------------------------------------------------------------


def test_busy_port_is_a_one_line_error(fusion_artifact):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = ["serve", "--engine", str(fusion_artifact.path), "--port", str(port), "--no-faces"]
        result = subprocess.run(
            [sys.executable, "-m", "fsanet", *cmd],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("fsanet: error: cannot listen")


def test_missing_serve_extra_names_the_install(tmp_path):
    fake = tmp_path / "fastapi"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('absent', name='fastapi')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "fsanet", "serve"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "fsanet: error: fsanet serve needs the 'fastapi' package: pip install 'fsanet[serve]'"
    )


def test_loadtest_command(server):
    options = ["--duration", "1.5", "--warmup", "0.3", "--concurrency", "8", "--crops", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "fsanet", "loadtest", server.url, "--json", *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == 0 and report["requests_ok"] > 0
    assert report["crops_per_s"] == pytest.approx(2 * report["throughput_rps"], rel=0.01)
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_loadtest_is_bounded_and_loopback_only(server):
    body = [_GOOD_NPY]
    with pytest.raises(FsanetError, match="loopback"):
        run_load("http://10.1.2.3:8000/v1/pose/crops", body, duration_s=1)
    with pytest.raises(FsanetError, match="duration"):
        run_load(server.url + CROPS, body, duration_s=10_000)
    report = run_load(
        server.url + CROPS, body, concurrency=4, duration_s=5, max_requests=20, warmup_s=0
    )
    assert report.ok == 20 and report.errors == 0

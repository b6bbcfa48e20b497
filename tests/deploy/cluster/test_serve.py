"""`fsanet serve --ray --address CLUSTER` against single-process `fsanet serve`, side by side:
the same answers to real crops and a real photo, the same errors, the same routes."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from fsanet.assets.aflw2000 import Aflw2000
from fsanet.engine.artifact import Artifact

pytest.importorskip("ray", reason="Ray is not installed (pip install 'fsanet[cluster]')")

# Batches of different sizes may round differently inside ONNX Runtime (~1e-5 degrees):
# far below what tells one crop from another.
ATOL = 1e-3
NPY = {"content-type": "application/x-npy"}
JPEG = {"content-type": "image/jpeg"}
PNG = {"content-type": "image/png"}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def servers(
    cli_command: list[str],
    fusion_artifact: Artifact,
    ray_cluster,
    launch,
    serve_options: tuple[str, ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, Any]]:
    """(single-process, Ray) servers of the same engine with the same options."""
    folder = tmp_path_factory.mktemp("servers")
    serve = [*cli_command, "serve", "--engine", str(fusion_artifact.path), *serve_options]
    head, _ = ray_cluster
    single = launch(serve, folder / "single")
    try:
        on_ray = launch([*serve, "--ray", "--address", head.address], folder / "ray")
    except BaseException:
        single.stop()
        raise
    yield single, on_ray
    left = on_ray.stop() + single.stop()
    assert not left, f"processes left by the servers: {left}"


@pytest.fixture(scope="module")
def crops(aflw2000: Aflw2000) -> np.ndarray:
    return aflw2000.images[:64]


def _both(servers: tuple[Any, Any], method: str, path: str, **kwargs) -> list:
    answers = []
    for server in servers:
        with server.client() as client:
            answers.append(client.request(method, path, **kwargs))
    return answers


def _angles(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([[p["yaw"], p["pitch"], p["roll"]] for p in response.json()["poses"]])


def test_the_ray_server_says_where_it_runs(servers, ray_cluster):
    _, on_ray = servers
    head, worker = ray_cluster
    log = on_ray.stderr.read_text()
    port = head.address.rpartition(":")[2]
    assert re.search(rf"Ray cluster [0-9.]+:{port}\n", log), log  # the cluster's own address
    assert "replicas: pose 1, detect 1" in log
    assert "sha256-checked on arrival" in log
    # Its replicas are on the cluster's nodes, not children of the server.
    assert head.replicas("fsanet-pose") + worker.replicas("fsanet-pose")
    assert head.replicas("fsanet-detect") + worker.replicas("fsanet-detect")


def test_crops_answers_equal_the_single_process_server(servers, crops):
    bodies = {
        "uint8 npy": ({"content": npy(crops)}, NPY),
        "float32 npy": ({"content": npy(crops[:7].astype(np.float32))}, NPY),
        "one crop": ({"content": npy(crops[5])}, NPY),
        "json": ({"json": {"crops": crops[:3].tolist()}}, {}),
    }
    for name, (body, headers) in bodies.items():
        single, on_ray = _both(servers, "POST", "/v1/pose/crops", headers=headers, **body)
        assert single.status_code == on_ray.status_code == 200, (name, on_ray.text)
        a, b = single.json(), on_ray.json()
        assert (a["model"], a["count"]) == (b["model"], b["count"]), name
        assert np.allclose(_angles(single), _angles(on_ray), atol=ATOL), name
        assert single.headers["content-type"] == on_ray.headers["content-type"]
        assert len(on_ray.headers["x-request-id"]) == len(single.headers["x-request-id"])


def test_concurrent_crops_are_batched_and_each_gets_its_own(servers, crops):
    """Many requests at once: each answer belongs to its own crop (batches split right)."""
    from concurrent.futures import ThreadPoolExecutor

    single, on_ray = servers
    expected = _angles(single.client().post("/v1/pose/crops", content=npy(crops), headers=NPY))

    def one(i: int) -> np.ndarray:
        with on_ray.client() as client:
            return _angles(client.post("/v1/pose/crops", content=npy(crops[i]), headers=NPY))

    with ThreadPoolExecutor(16) as pool:
        got = np.concatenate(list(pool.map(one, range(len(crops)))))
    assert np.allclose(got, expected, atol=ATOL)


def _photo_bodies(shared: Path) -> dict[str, tuple[bytes, dict[str, str]]]:
    import zipfile

    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        jpeg = z.read("AFLW2000/image00002.jpg")
        other = z.read("AFLW2000/image00004.jpg")
    face = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    mosaic = np.vstack([np.hstack([face, face])] * 2)  # four faces
    return {
        "jpeg": (jpeg, JPEG),
        "another jpeg": (other, JPEG),
        "png mosaic": (cv2.imencode(".png", mosaic)[1].tobytes(), PNG),
        "no face": (cv2.imencode(".png", np.zeros((64, 80, 3), np.uint8))[1].tobytes(), PNG),
    }


def test_photo_answers_equal_the_single_process_server(servers, shared):
    for name, (data, headers) in _photo_bodies(shared).items():
        single, on_ray = _both(servers, "POST", "/v1/pose", content=data, headers=headers)
        assert single.status_code == on_ray.status_code == 200, (name, on_ray.text)
        a, b = single.json(), on_ray.json()
        for key in ("model", "width", "height", "count", "total", "truncated"):
            assert a[key] == b[key], (name, key)
        assert a["count"] == (0 if name == "no face" else 4 if "mosaic" in name else 1), name
        for fa, fb in zip(a["faces"], b["faces"], strict=True):
            for key in ("box", "score", "landmarks"):
                assert fa[key] == fb[key], (name, key)
            for key in ("yaw", "pitch", "roll"):  # rounded to 0.01 degree
                assert fa[key] == pytest.approx(fb[key], abs=0.011), (name, key)


def test_multipart_photo_equals_the_single_process_server(servers, shared):
    jpeg, _ = _photo_bodies(shared)["jpeg"]
    files = {"image": ("face.jpg", jpeg, "image/jpeg")}
    single, on_ray = _both(servers, "POST", "/v1/pose", files=files)
    assert single.status_code == on_ray.status_code == 200
    assert single.json()["faces"][0]["box"] == on_ray.json()["faces"][0]["box"]


def _bad_requests(crops: np.ndarray, shared: Path) -> dict[str, tuple[str, str, dict]]:
    jpeg, _ = _photo_bodies(shared)["jpeg"]
    png = cv2.imencode(".png", np.full((300, 300, 3), 127, np.uint8))[1].tobytes()
    damaged_png = png[:60] + bytes(len(png) - 60)  # a good header, a body of zeros
    nan = crops[:2].astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    big = cv2.imencode(".png", np.zeros((2500, 2000, 3), np.uint8))[1].tobytes()  # 5 Mpixel
    many = np.concatenate([crops, crops[:1]])  # 65, one past --max-crops
    crops_path, image_path = "/v1/pose/crops", "/v1/pose"
    return {
        "wrong media type": ("POST", crops_path, {"content": b"x", "headers": JPEG}),
        "not npy": ("POST", crops_path, {"content": b"\x93NUMPY garbage", "headers": NPY}),
        "empty body": ("POST", crops_path, {"content": b"", "headers": NPY}),
        "bad json": ("POST", crops_path, {"content": b'{"crops": [', "headers": {}}),
        "wrong shape": ("POST", crops_path, {"json": {"crops": [[1, 2, 3]]}}),
        "nan": ("POST", crops_path, {"content": npy(nan), "headers": NPY}),
        "too many crops": ("POST", crops_path, {"content": npy(many), "headers": NPY}),
        "body too large": (
            "POST", crops_path, {"content": npy(crops[:50].astype(np.float32)), "headers": NPY},
        ),
        "not an image": ("POST", image_path, {"content": b"hello", "headers": JPEG}),
        "damaged image (decoded on a replica)": (
            "POST", image_path, {"content": damaged_png, "headers": PNG},
        ),
        "image too large": ("POST", image_path, {"content": big, "headers": PNG}),
        "truncated jpeg header": ("POST", image_path, {"content": jpeg[:20], "headers": JPEG}),
        "multipart without a file": ("POST", image_path, {"data": {"x": "1"}, "files": {}}),
        "wrong method": ("GET", image_path, {}),
        "unknown route": ("GET", "/v2/nothing", {}),
    }  # fmt: skip


def test_errors_equal_the_single_process_server(servers, crops, shared):
    for name, (method, path, kwargs) in _bad_requests(crops, shared).items():
        if "files" in kwargs and not kwargs["files"]:  # multipart with one plain field
            kwargs = {"files": {"x": (None, "1")}}
        single, on_ray = _both(servers, method, path, **kwargs)
        assert 400 <= single.status_code < 500, (name, single.text)
        assert (single.status_code, single.json()) == (on_ray.status_code, on_ray.json()), name
        assert single.headers["content-type"] == on_ray.headers["content-type"], name


def test_probes_and_metrics_equal_the_single_process_server(servers, crops):
    _both(servers, "POST", "/v1/pose/crops", content=npy(crops[:2]), headers=NPY)
    for path in ("/healthz", "/readyz"):
        single, on_ray = _both(servers, "GET", path)
        assert (single.status_code, single.json()) == (on_ray.status_code, on_ray.json()), path

    def names(response: httpx.Response) -> set[str]:
        return {line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")}

    single, on_ray = _both(servers, "GET", "/metrics")
    assert single.headers["content-type"] == on_ray.headers["content-type"]
    assert names(single) == names(on_ray) and "fsanet_batch_size" in names(on_ray)
    # The Ray server counted what it served, as the single-process one does.
    assert 'fsanet_requests_total{endpoint="/v1/pose/crops",status="200"}' in on_ray.text
    assert "fsanet_crops_total" in on_ray.text and "fsanet_faces_total" in on_ray.text


def test_without_ray_the_cluster_extra_is_named_in_one_line(fusion_artifact):
    """Ray hidden from the import system: one line naming the extra, exit 1, no traceback."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from fsanet.cli import main\n"
        f"sys.exit(main(['serve', '--ray', '--engine', {str(fusion_artifact.path)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "fsanet: error: fsanet serve --ray needs the 'ray' package: pip install 'fsanet[cluster]'"
    ]

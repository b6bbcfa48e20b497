"""Two Ray nodes on this machine: the pose replica pinned to the worker node by a custom
resource answers correctly; killed under load, its requests get a clean 503 or an answer,
never a hang, and Ray starts a new one."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from fsanet.assets.aflw2000 import Aflw2000
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine

pytest.importorskip("ray", reason="Ray is not installed (pip install 'fsanet[cluster]')")

APP = "fsnode"
TIMEOUT_S = 15  # the server's request timeout: the longest a request may wait for a replica
NPY = {"content-type": "application/x-npy"}
# The Python API, for what the command line does not offer: replicas pinned by resource.
SERVER = """
import json, sys
from fsanet.engine.artifact import Artifact
from fsanet.deploy.cluster import FaceOptions, RayOptions, Replicas, serve_on_ray
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.config import Limits
path, address, pose, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
config = ServeConfig(port=0, limits=Limits(request_timeout_s=float(timeout)))
options = RayOptions(address, Replicas(1, 1), pose_resources=pose, app="fsnode")
serve_on_ray(Artifact.load(path), config, options, FaceOptions())
"""

RESTART_GUARD_S = 180.0  # = conftest.START_TIMEOUT_S


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(
    fusion_artifact: Artifact, ray_cluster, launch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    head, worker = ray_cluster
    (resource,) = worker.resources
    cmd = [sys.executable, "-c", SERVER, str(fusion_artifact.path), head.address]
    srv = launch([*cmd, json.dumps({resource: 1}), str(TIMEOUT_S)], tmp_path_factory.mktemp("mn"))
    yield srv
    srv.stop()


def test_the_pose_replica_on_the_worker_node_answers(
    server, ray_cluster, aflw2000: Aflw2000, fusion_engine: PoseEngine
):
    head, worker = ray_cluster
    assert len(worker.replicas(f"{APP}-pose")) == 1  # a child of the worker's raylet
    assert head.replicas(f"{APP}-pose") == []
    crops = aflw2000.images[:16]
    with server.client() as client:
        answer = client.post("/v1/pose/crops", content=npy(crops), headers=NPY)
    assert answer.status_code == 200, answer.text
    got = np.array([[p["yaw"], p["pitch"], p["roll"]] for p in answer.json()["poses"]])
    assert np.allclose(got, fusion_engine(crops), atol=1e-3)


def test_a_photo_goes_through_both_nodes(server, shared):
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        jpeg = z.read("AFLW2000/image00002.jpg")
    with server.client() as client:
        answer = client.post("/v1/pose", content=jpeg, headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    (face,) = answer.json()["faces"]
    assert -15 < face["yaw"] < 15 and face["score"] > 0.8  # image00002: a frontal face


def test_a_killed_pose_replica_fails_cleanly_and_comes_back(server, ray_cluster, aflw2000):
    _, worker = ray_cluster
    (old,) = worker.replicas(f"{APP}-pose")
    bodies = [npy(aflw2000.images[i : i + 1 + i % 4]) for i in range(8)]
    results: list[tuple[float, int, dict]] = []  # (time, status, body)
    failures: list[str] = []  # anything but an HTTP answer: a timeout would mean a hang
    stop = threading.Event()

    def client(body: bytes) -> None:
        with server.client(timeout=TIMEOUT_S + 25) as http:
            while not stop.is_set():
                try:
                    answer = http.post("/v1/pose/crops", content=body, headers=NPY)
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    return
                results.append((time.monotonic(), answer.status_code, answer.json()))

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    # A guard against a hang, not a speed claim: the time the fixtures allow a replica to
    # start on a busy 2-core machine (conftest.START_TIMEOUT_S).
    deadline = killed + RESTART_GUARD_S
    while time.monotonic() < deadline:  # until answers come again from a new replica
        if any(t > killed + 0.5 and s == 200 for t, s, _ in results[-8:]):
            break
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT_S + 30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert not failures, failures
    statuses = {s for _, s, _ in results}
    assert statuses <= {200, 503}, statuses
    for _, status, body in results:
        if status == 503:
            assert set(body) == {"error", "status"} and body["status"] == 503
    back = [t - killed for t, s, _ in results if s == 200 and t > killed + 0.5]
    assert back, f"no answer within {RESTART_GUARD_S:g} s of the kill (a replica's start time)"
    after = [s for t, s, _ in results if t > killed]
    print(
        f"\nkill: {len(results)} requests, {after.count(200)} x 200 and {after.count(503)} x 503"
        f" after the kill; answering again {back[0]:.1f} s after it"
    )
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
    new = worker.replicas(f"{APP}-pose")
    assert len(new) == 1 and new != [old]  # Ray started another on the worker node

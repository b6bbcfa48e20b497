"""`fsanet serve --ray` without --address: a local Ray cluster on 127.0.0.1 for the life of
the server, autoscaled replicas, large requests, and nothing left running once it stops."""

from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest

from fsanet.assets.aflw2000 import Aflw2000
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine

pytest.importorskip("ray", reason="Ray is not installed (pip install 'fsanet[cluster]')")


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_a_local_cluster_serves_and_stops_with_the_server(
    cli_command: list[str],
    fusion_artifact: Artifact,
    fusion_engine: PoseEngine,
    aflw2000: Aflw2000,
    launch,
    serve_options: tuple[str, ...],
    tmp_path,
):
    cmd = [*cli_command, "serve", "--engine", str(fusion_artifact.path), *serve_options]
    # The default request limits, past the 4 MB that Ray's gRPC transport takes by default.
    large = ("--max-body-mb", "16", "--max-crops", "256", "--max-pixels", "40000000")
    server = launch([*cmd, *large, "--ray", "--replicas", "1-2"], tmp_path)
    try:
        log = server.stderr.read_text()
        # Every Ray port of a local cluster is on loopback.
        assert re.search(r"Ray cluster 127\.0\.0\.1:\d+\n", log), log
        assert "replicas: pose auto 1-2, detect auto 1-2" in log
        crops = np.concatenate([aflw2000.images[:128]] * 2)  # 256 crops: 12.6 MB as float32
        noise = np.random.default_rng(0).integers(0, 256, (1300, 1300, 3), dtype=np.uint8)
        png = cv2.imencode(".png", noise)[1].tobytes()  # ~5 MB, no face
        assert len(png) > 4 * 1024 * 1024
        with server.client() as client:
            answer = client.post(
                "/v1/pose/crops", content=npy(crops), headers={"content-type": "application/x-npy"}
            )
            photo = client.post("/v1/pose", content=png, headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        got = np.array([[p["yaw"], p["pitch"], p["roll"]] for p in answer.json()["poses"]])
        assert np.allclose(got, fusion_engine(crops), atol=1e-3)
        assert photo.status_code == 200, photo.text
        assert (photo.json()["width"], photo.json()["count"]) == (1300, 0)
    finally:
        left = server.stop()
    code = server.proc.returncode
    assert code == 0, server.stderr.read_text()[-2000:]
    assert left == [], f"left running after the server stopped: {left}"

"""`fsanet serve` with a flip TTA engine: the same API, the averaged angles."""

from __future__ import annotations

import subprocess

import numpy as np

from fsanet.engine.pose import PoseEngine

ATOL = 1e-4


def test_a_flip_engine_serves_its_averaged_angles(make_server, flip_artifact, aflw2000):
    crops = aflw2000.images[:7]
    with PoseEngine.from_artifact(flip_artifact) as engine:
        expected = engine(crops)
        plain = engine.predict_variants(crops)["fusion/crop"]
    server = make_server(artifact=flip_artifact)
    response = server.post_crops(crops)
    assert response.json()["model"] == flip_artifact.name
    assert np.allclose(server.angles(response), expected, atol=ATOL)
    assert not np.allclose(server.angles(response), plain, atol=0.01)  # not the crop alone


def test_tta_asked_of_a_plain_engine_stops_the_server_in_one_line(cli_command, fusion_artifact):
    args = ["serve", "--engine", str(fusion_artifact.path), "--port", "0", "--tta", "flip"]
    result = subprocess.run([*cli_command, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsanet: error")]
    assert len(errors) == 1 and "built without --tta flip" in errors[0], result.stderr

"""Scene cuts on the real clips: the three cuts of stage-cuts.mp4 (checked by eye) and
none elsewhere; no track, and no carried box, crosses a cut."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fsanet.cli import main
from fsanet.core.errors import FsanetError
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.predict import predict
from fsanet.faces.video import SceneCuts, VideoOptions

pytestmark = pytest.mark.real

STAGE_CUTS = [20, 82, 211]  # stage -> close profile -> stage -> audience


@pytest.fixture(scope="module")
def estimator(fusion_engine: PoseEngine) -> HeadPoseEstimator:
    return HeadPoseEstimator(fusion_engine)


def cuts_in(clip: Path, most: int | None = None) -> list[int]:
    capture, found, cuts, index = cv2.VideoCapture(str(clip)), [], SceneCuts(), 0
    while most is None or index < most:
        ok, image = capture.read()
        if not ok:
            break
        if cuts.is_cut(image):
            found.append(index)
        index += 1
    capture.release()
    return found


def test_the_cuts_of_stage_cuts_and_none_in_single_shots(shared: Path) -> None:
    videos = shared / "videos"
    assert cuts_in(videos / "stage-cuts.mp4") == STAGE_CUTS
    for clip in ("classroom.mp4", "talking-head.mp4", "turns-female-and-male.gif"):
        assert cuts_in(videos / clip, 120) == [], clip  # moving cameras, turning heads


def _tracks(estimator: HeadPoseEstimator, clip: Path, options: VideoOptions) -> dict[int, list]:
    out = io.StringIO()
    predict([str(clip)], estimator, jsonl=out, max_frames=90, video=options)
    spans: dict[int, list[int]] = {}
    for record in map(json.loads, out.getvalue().splitlines()):
        spans.setdefault(record["track"], []).append(record["frame"])
    return spans


def test_no_track_and_no_carried_box_crosses_a_cut(
    estimator: HeadPoseEstimator, shared: Path
) -> None:
    clip = shared / "videos" / "stage-cuts.mp4"

    def crossing(spans: dict[int, list[int]]) -> list[int]:
        return [t for t, f in spans.items() if any(min(f) < c <= max(f) for c in STAGE_CUTS)]

    # Without cut detection, boxes carried from the last shot are posed on the new one
    blind = _tracks(estimator, clip, VideoOptions(detect_every=3, cut_threshold=None))
    assert crossing(blind)
    seen = _tracks(estimator, clip, VideoOptions(detect_every=3))
    assert crossing(seen) == []
    assert min(min(f) for t, f in seen.items()) == 0  # faces found in the first shot too


def test_a_bad_threshold_is_refused() -> None:
    with pytest.raises(FsanetError, match="scene-cut threshold must be positive"):
        VideoOptions(cut_threshold=0)
    with pytest.raises(ValueError, match="scene-cut threshold"):
        SceneCuts(-1)
    first = SceneCuts()
    assert first.difference(np.zeros((10, 10, 3), np.uint8)) == 0.0  # nothing to compare yet


def test_cli_scene_cut_option(
    fusion_artifact: Artifact, shared: Path, capsys: pytest.CaptureFixture
) -> None:
    clip = str(shared / "videos" / "stage-cuts.mp4")
    base = ["predict", clip, "--frames", "30", "--detect-every", "3", "-q"]
    base += ["--engine", str(fusion_artifact.path)]
    ids: dict[str, set[int]] = {}
    for threshold in ("20", "0"):
        assert main([*base, "--scene-cut", threshold]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        ids[threshold] = {r["track"] for r in records if r["frame"] >= STAGE_CUTS[0]}
        ids[threshold] &= {r["track"] for r in records if r["frame"] < STAGE_CUTS[0]}
    assert ids["20"] == set() and ids["0"]  # off: faces of the first shot carried into the next
    with pytest.raises(SystemExit):
        main([*base, "--scene-cut", "-1"])

"""The pipelined video path on a real clip: records identical to the sequential path's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fsanet.engine import PoseEngine
from fsanet.errors import FsanetError
from fsanet.predict import HeadPoseEstimator, predict
from fsanet.video import VideoFrame, VideoOptions

pytestmark = pytest.mark.real

FRAMES = 12  # bounded: about a second of 720p detection per run on 2 cores


@pytest.fixture(scope="module")
def estimator(fusion_engine: PoseEngine) -> HeadPoseEstimator:
    return HeadPoseEstimator(fusion_engine)


def _run(estimator: HeadPoseEstimator, clip: Path, options: VideoOptions) -> list[dict]:
    out = io.StringIO()
    predict([str(clip)], estimator, jsonl=out, max_frames=FRAMES, video=options, rotation=True)
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(
    "every, size", [(1, None), (3, 640)], ids=["every-frame", "every-3rd-at-640"]
)
def test_pipelined_records_equal_the_sequential_ones(
    estimator: HeadPoseEstimator, shared: Path, every: int, size: int | None
) -> None:
    clip = shared / "videos" / "classroom.mp4"
    one = _run(estimator, clip, VideoOptions(pipelined=False, detect_every=every, detect_size=size))
    many = _run(estimator, clip, VideoOptions(pipelined=True, detect_every=every, detect_size=size))
    assert len(one) >= 5 * FRAMES  # the classroom's faces, every frame
    assert many == one
    assert sorted({r["frame"] for r in many}) == list(range(FRAMES))


def test_carried_frames_keep_every_face_and_its_track(
    estimator: HeadPoseEstimator, shared: Path
) -> None:
    clip = shared / "videos" / "classroom.mp4"
    frames: list[VideoFrame] = []
    predict(
        [str(clip)], estimator, max_frames=6, video=VideoOptions(detect_every=3),
        on_frame=frames.append,
    )  # fmt: skip
    assert [f.detections is None for f in frames] == [False, True, True, False, True, True]
    first = {f.track for f in frames[0].faces}
    for frame in frames[1:3]:  # carried: the same tracks, boxes moved, angles posed anew
        assert {f.track for f in frame.faces} == first
        assert "detect" not in frame.seconds and frame.seconds["pose"] > 0
    stages = set(frames[0].seconds)
    assert stages == {"decode", "detect", "crop", "pose", "write", "latency"}


def test_detect_size_scales_boxes_back_to_the_frame(
    estimator: HeadPoseEstimator, shared: Path
) -> None:
    clip = shared / "videos" / "talking-head.mp4"  # 512 x 512, one face
    full = _run(estimator, clip, VideoOptions(pipelined=False))
    small = _run(estimator, clip, VideoOptions(pipelined=False, detect_size=256))
    assert len(full) == len(small) == FRAMES
    for a, b in zip(full, small, strict=True):
        # Found at half size and mapped back: the same face, within a few pixels
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)) < 0.08 * a["box"][2]
        assert a["box"][2] > 100


def test_video_options_are_checked() -> None:
    with pytest.raises(FsanetError, match="--detect-every must be at least 1"):
        VideoOptions(detect_every=0)
    with pytest.raises(FsanetError, match="--detect-size must be at least 64"):
        VideoOptions(detect_size=10)
    assert VideoOptions(detect_every=3, detect_size=640).describe() == (
        "pipelined, detect every 3, detect at 640 px"
    )

"""The pipelined video path on a real clip: records identical to the sequential path's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fsanet.core.errors import FsanetError
from fsanet.engine.backends.base import available_cpus
from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.predict import predict
from fsanet.faces.tracking import OneEuro
from fsanet.faces.video import FaceStages, VideoFrame, VideoOptions, core_split, video_frames
from fsanet.faces.vision.detect import YuNet

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
    assert VideoOptions(split_cores=True, batch_frames=1).describe() == (
        "pipelined, cores split, 1 frame per engine call"
    )
    with pytest.raises(FsanetError, match="crops per engine call must be at least 1"):
        VideoOptions(batch_crops=0)


def test_core_split_halves_the_cores_with_the_odd_one_to_the_engine() -> None:
    assert core_split(1) == (1, 1)
    assert core_split(2) == (1, 1)
    assert core_split(3) == (1, 2)
    assert core_split(16) == (8, 8)


class _Counting:
    """The real engine, recording the crops of each call."""

    def __init__(self, engine: PoseEngine) -> None:
        self.engine, self.calls = engine, []

    def __call__(self, crops):
        self.calls.append(len(crops))
        return self.engine(crops)

    def close(self) -> None:
        pass


def test_a_files_frames_share_engine_calls_with_records_unchanged(
    fusion_engine: PoseEngine, shared: Path
) -> None:
    clip = shared / "videos" / "classroom.mp4"  # ~7 faces a frame
    counting = _Counting(fusion_engine)
    estimator = HeadPoseEstimator(counting)  # type: ignore[arg-type]

    def run(options: VideoOptions) -> list[str]:
        out = io.StringIO()
        predict(
            [str(clip)], estimator, jsonl=out, max_frames=FRAMES, video=options,
            smooth=OneEuro(), rotation=True,
        )  # fmt: skip
        return out.getvalue().splitlines()

    one = run(VideoOptions(pipelined=False, detect_every=3))
    assert counting.calls == [len([r for r in one if f'"frame": {i},' in r]) for i in range(FRAMES)]
    counting.calls.clear()
    many = run(VideoOptions(detect_every=3, batch_frames=4, batch_crops=20))
    assert many == one  # smoothed, carried and batched: the same records, in order
    # At most 20 crops a call (a frame never cut), fewer calls than frames
    assert sum(counting.calls) == len(one) and max(counting.calls) <= 20
    assert len(counting.calls) < FRAMES


def test_the_pipeline_shares_the_cores_while_it_runs_and_puts_them_back(
    estimator: HeadPoseEstimator, shared: Path
) -> None:
    clip = shared / "videos" / "talking-head.mp4"
    runners = [p.runner for p in estimator.engine._parts]
    detector = estimator.detector
    assert isinstance(detector, YuNet)

    def now() -> tuple[int, int, list[int]]:
        return cv2.getNumThreads(), detector.threads, [r.threads for r in runners]

    before = now()
    during: list[tuple[int, int, list[int]]] = []

    def look(frame: VideoFrame) -> None:
        during.append(now())

    split = VideoOptions(split_cores=True)
    predict([str(clip)], estimator, max_frames=3, video=split, on_frame=look)
    detect, engine = core_split(available_cpus())
    # Two frames detected at once, each on half the detector's share
    assert during[0] == (detect, max(1, detect // 2), [min(t, engine) for t in before[2]])
    assert now() == before
    # Without the split, only the detector's threads are divided between its two workers;
    # one worker, or sequentially, nothing is changed
    halved = (before[0], max(1, before[1] // 2), before[2])
    options = {
        VideoOptions(): halved,
        VideoOptions(detect_workers=1): before,
        VideoOptions(pipelined=False, split_cores=True): before,
    }
    for option, expected in options.items():
        during.clear()
        predict([str(clip)], estimator, max_frames=2, video=option, on_frame=look)
        assert during and all(d == expected for d in during)
        assert now() == before


def test_a_failing_stage_still_puts_the_cores_back(estimator: HeadPoseEstimator) -> None:
    before = cv2.getNumThreads(), estimator.detector.threads  # type: ignore[attr-defined]
    stages = FaceStages(estimator, VideoOptions(split_cores=True))

    def frames():
        yield VideoFrame(0, np.zeros((64, 64, 3), np.uint8), 0.0, 0.0)
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        list(video_frames(frames(), stages))
    assert (cv2.getNumThreads(), estimator.detector.threads) == before  # type: ignore[attr-defined]

"""Tracks on a real multi-face clip: every face gets an id, ids hold while faces stay."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest

from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.predict import predict

pytestmark = pytest.mark.real

FRAMES = 40  # bounded: about 3 s of detection on 2 cores


def test_classroom_faces_keep_their_ids(fusion_engine: PoseEngine, shared: Path) -> None:
    out = io.StringIO()
    clip = shared / "videos" / "classroom.mp4"
    summary = predict([str(clip)], HeadPoseEstimator(fusion_engine), jsonl=out, max_frames=FRAMES)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert summary.frames == FRAMES and len(records) == summary.faces
    assert all(isinstance(r["track"], int) for r in records)
    assert [r["time"] for r in records if r["face"] == 0][:3] == [0.0, 0.04, 0.08]  # 25 fps
    per_frame = Counter(r["frame"] for r in records)
    assert min(per_frame.values()) >= 5  # the children and the teacher, every frame
    for frame in per_frame:  # two faces of one frame never share an id
        tracks = [r["track"] for r in records if r["frame"] == frame]
        assert len(tracks) == len(set(tracks))
    lifetimes = Counter(r["track"] for r in records)
    # Faces visible throughout keep one id: at least 5 tracks cover every frame, and at
    # most 3 other ids appear (a detection flickering at the threshold, a new face).
    assert sum(n == FRAMES for n in lifetimes.values()) >= 5
    assert len(lifetimes) <= sum(n == FRAMES for n in lifetimes.values()) + 3


def test_a_variable_rate_clip_gets_each_frame_s_own_time(
    fusion_engine: PoseEngine, shared: Path
) -> None:
    """turns-female.gif has its own delay per frame (80, 90 ms...): times follow them, not
    frame / fps; constant-rate clips above keep frame / fps."""
    import cv2

    clip = shared / "videos" / "turns-female.gif"
    capture = cv2.VideoCapture(str(clip))
    fps, delays = capture.get(cv2.CAP_PROP_FPS), []
    while capture.read()[0]:
        delays.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3)
    capture.release()
    assert any(abs(t - i / fps) > 0.02 for i, t in enumerate(delays))  # it is variable-rate
    out = io.StringIO()
    predict([str(clip)], HeadPoseEstimator(fusion_engine), jsonl=out, max_frames=8)
    times = {r["frame"]: r["time"] for r in map(json.loads, out.getvalue().splitlines())}
    assert times == {i: round(delays[i], 3) for i in times} and len(times) == 8

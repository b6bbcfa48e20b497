"""`fsanet bench --end-to-end VIDEO`: whole `fsanet predict` runs on one video, side by side.

Each run is what `fsanet predict VIDEO --jsonl FILE` does (records written to the null
device, no annotated video): the sequential path (every frame, full size, one stage after
another: the reference), the pipelined path, and the pipelined path with the real-time
options when given. Per run: frames/s, the mean time per frame of every stage (decode,
detect, crop, pose, write; pipelined, stages overlap, so they add up to more than the
wall time), per-frame latency percentiles (from the start of a frame's decode to its
records written), and against the reference the mean |change| of yaw, pitch and roll
over the faces matched frame by frame (IoU >= 0.5), the share of its faces matched and
the longest run of frames a reference face went without a match.

With `ablate`, the reference is also run with OpenCV's own YuNet (`cv2.FaceDetectorYN`,
the detector before it moved to ONNX Runtime), and every pipelined run is made four
ways, side by side: one frame detected and posed at a time (the pipeline as first
built), a file's frames batched for the engine, then also two frames detected at once
(the default), and with the cores split between detector and engine
(`VideoOptions.split_cores`).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from fsanet.core.errors import FsanetError
from fsanet.core.machine import this_machine
from fsanet.faces.tracking.boxes import iou_matrix
from fsanet.faces.video import STAGES, VideoFrame, VideoOptions
from fsanet.measure.bench.stats import LatencyStats

if TYPE_CHECKING:
    from fsanet.faces.estimator import HeadPoseEstimator
    from fsanet.faces.vision.detect import Detector

MATCH_IOU = 0.5  # the same face in two runs: boxes from one detector barely move
WARMUP_FRAMES = 5  # the engine's and detector's first calls are slow: not timed

# frame -> [(track, box, (yaw, pitch, roll))]
_Faces = dict[int, list[tuple[int, tuple[float, ...], tuple[float, float, float]]]]


@dataclass(frozen=True)
class AngleChange:
    """A run's angles against the reference run's, on the faces both found."""

    yaw: float  # mean |change|, degrees
    pitch: float
    roll: float
    worst_track: float  # the largest mean |change| of one reference track (three angles)
    matched: float  # share of the reference's faces matched
    longest_gap: int  # most consecutive frames one reference face went unmatched

    def to_dict(self) -> dict[str, float]:
        return {
            "yaw": round(self.yaw, 3),
            "pitch": round(self.pitch, 3),
            "roll": round(self.roll, 3),
            "worst_track": round(self.worst_track, 3),
            "matched": round(self.matched, 4),
            "longest_gap": self.longest_gap,
        }


@dataclass(frozen=True)
class EndToEndRun:
    options: VideoOptions
    frames: int
    faces: int
    seconds: float
    stages: dict[str, float]  # mean ms per frame
    latency: LatencyStats
    change: AngleChange | None  # None for the reference itself
    detector: str = "onnxruntime"  # YuNet's runtime (fsanet.faces.vision.detect.RUNTIMES)
    rounds_fps: tuple[float, ...] = ()  # frames/s of every round, when run in rounds

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        opencv = ", OpenCV's detector" if self.detector == "opencv" else ""
        return self.options.describe() + opencv

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.describe(),
            "detector": self.detector,
            "detect_every": self.options.detect_every,
            "detect_size": self.options.detect_size,
            "pipelined": self.options.pipelined,
            "frames": self.frames,
            "faces": self.faces,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "rounds_fps": [round(v, 2) for v in self.rounds_fps],
            "stage_ms": {k: round(v, 3) for k, v in self.stages.items()},
            "latency_ms": self.latency.to_dict(2),
            "change_vs_reference": None if self.change is None else self.change.to_dict(),
        }


@dataclass(frozen=True)
class EndToEndVideoReport:
    video: str
    size: tuple[int, int]  # width, height
    engine: str
    machine: str
    runs: list[EndToEndRun]

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "size": list(self.size),
            "engine": self.engine,
            "machine": self.machine,
            "runs": [r.to_dict() for r in self.runs],
        }

    def __str__(self) -> str:
        ref = self.runs[0]
        width = max(44, *(len(r.describe()) + 2 for r in self.runs))
        rounds = len(ref.rounds_fps)
        spread = rounds > 1
        lines = [
            f"fsanet bench --end-to-end {self.video} ({self.size[0]}x{self.size[1]}, "
            f"{ref.frames} frames, {ref.faces / max(ref.frames, 1):.1f} faces/frame)",
            f"engine: {self.engine}; machine: {self.machine}",
            *([f"{rounds} interleaved rounds: each run's median round, frames/s range"] * spread),
            "",
            f"{'run':<{width}}{'frames/s':>9}"
            + (f"{'range':>14}" if spread else "")
            + f"{'x':>6}"
            + "".join(f"{s:>8}" for s in STAGES)
            + f"{'p50':>8}{'p90':>8}{'p99':>8}",
            f"{'':<{width}}{'':>9}{'':>{14 if spread else 0}}{'':>6}{'ms/frame per stage':>40}"
            f"{'latency ms':>24}",
        ]
        for run in self.runs:
            low, high = min(run.rounds_fps, default=0.0), max(run.rounds_fps, default=0.0)
            lines.append(
                f"{run.describe():<{width}}{run.fps:>9.1f}"
                + (f"{f'{low:.1f}-{high:.1f}':>14}" if spread else "")
                + f"{run.fps / ref.fps:>6.2f}"
                + "".join(f"{run.stages.get(s, 0.0):>8.2f}" for s in STAGES)
                + f"{run.latency.p50:>8.1f}{run.latency.p90:>8.1f}{run.latency.p99:>8.1f}"
            )
        changed = [
            r
            for r in self.runs
            if r.change is not None and (r.options.real_time or r.detector != ref.detector)
        ]
        if changed:
            lines += ["", f"angles against '{ref.describe()}' (faces matched by IoU):"]
            for run in changed:
                c = run.change
                assert c is not None
                lines.append(
                    f"{run.describe():<{width}} mean |change| yaw {c.yaw:.2f}, pitch "
                    f"{c.pitch:.2f}, roll {c.roll:.2f} deg (worst track {c.worst_track:.2f}); "
                    f"{100 * c.matched:.1f}% of faces matched, longest gap {c.longest_gap}"
                )
        return "\n".join(lines)


def bench_end_to_end(
    video: str | Path,
    estimator: HeadPoseEstimator,
    options: list[VideoOptions] | None = None,
    *,
    max_frames: int | None = None,
    ablate: bool = False,
    rounds: int = 1,
) -> EndToEndVideoReport:
    """Run `video` sequentially (the reference), pipelined, then with each of `options`;
    with `ablate`, the reference also with OpenCV's YuNet, and each pipelined run also
    one frame at a time, with one detection at a time and with the cores split. With
    `rounds` > 1, the runs are repeated in turn and each reports its median round, with
    the range of its frames/s."""
    if rounds < 1:
        raise FsanetError(f"rounds must be at least 1, got {rounds}")
    import cv2

    from fsanet.faces.predict import predict
    from fsanet.faces.vision.detect import YuNet

    capture = cv2.VideoCapture(str(video))
    opened = capture.isOpened()
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    if not opened or not Path(video).is_file():
        raise FsanetError(f"{video} cannot be opened as a video")
    sequential = VideoOptions(pipelined=False)
    plans = [sequential, VideoOptions()]
    plans += [o for o in options or [] if o not in plans]
    if ablate:
        plans = [
            step
            for plan in plans
            for step in (
                [
                    replace(plan, batch_frames=1, detect_workers=1),
                    replace(plan, detect_workers=1),
                    plan,
                    replace(plan, split_cores=True),
                ]
                if plan.pipelined
                else [plan]
            )
        ]
    estimators = {"default": estimator}
    detector = estimator.detector
    if ablate and isinstance(detector, YuNet) and detector.runtime != "opencv":
        estimators["opencv"] = _with_detector(estimator, detector.with_runtime("opencv"))
    steps = [("default", plan) for plan in plans]
    if "opencv" in estimators:
        steps.insert(1, ("opencv", sequential))  # right after its reference
    trials: list[list[EndToEndRun]] = [[] for _ in steps]
    with open(os.devnull, "w", encoding="utf-8") as null:
        for each in estimators.values():
            predict([str(video)], each, jsonl=null, max_frames=WARMUP_FRAMES)
        reference: _Faces | None = None
        for _ in range(rounds):  # interleaved: a slow spell of the machine hits every run
            for (which, plan), tried in zip(steps, trials, strict=True):
                seen: list[VideoFrame] = []
                start = time.perf_counter()
                summary = predict(
                    [str(video)], estimators[which], jsonl=null, max_frames=max_frames,
                    video=plan, on_frame=seen.append,
                )  # fmt: skip
                seconds = time.perf_counter() - start
                faces = _faces(seen)
                reference = faces if reference is None else reference
                tried.append(
                    EndToEndRun(
                        plan,
                        summary.frames,
                        summary.faces,
                        seconds,
                        {
                            s: 1e3 * sum(f.seconds.get(s, 0.0) for f in seen) / len(seen)
                            for s in STAGES
                        },
                        LatencyStats.from_seconds([f.seconds["latency"] for f in seen]),
                        None if tried is trials[0] else angle_change(reference, faces),
                        _runtime(estimators[which].detector),
                    )
                )
    runs = [_median(tried) for tried in trials]
    e = estimator.engine
    engine = " ".join(str(getattr(e, k, "")) for k in ("name", "backend", "precision")).strip()
    return EndToEndVideoReport(
        str(video), size, engine or type(e).__name__, str(this_machine()), runs
    )


def _median(tried: list[EndToEndRun]) -> EndToEndRun:
    """The round of median time, with every round's frames/s."""
    middle = sorted(tried, key=lambda run: run.seconds)[(len(tried) - 1) // 2]
    return replace(middle, rounds_fps=tuple(run.fps for run in tried))


def _with_detector(estimator: HeadPoseEstimator, detector: Detector) -> HeadPoseEstimator:
    """The same estimator (engine, crop rule, limits) with another detector."""
    other = copy.copy(estimator)
    other.detector = detector
    return other


def _runtime(detector: object) -> str:
    return str(getattr(detector, "runtime", type(detector).__name__))


def _faces(frames: list[VideoFrame]) -> _Faces:
    return {
        f.index: [
            (face.track or 0, face.box, (face.yaw, face.pitch, face.roll)) for face in f.faces
        ]
        for f in frames
    }


def angle_change(reference: _Faces, run: _Faces) -> AngleChange:
    """Faces of `run` matched to `reference`'s frame by frame (Hungarian on IoU)."""
    diffs: list[np.ndarray] = []
    per_track: dict[int, list[float]] = {}
    missing: dict[int, list[int]] = {}  # reference track -> frames it went unmatched
    total = 0
    for frame, ref_faces in reference.items():
        total += len(ref_faces)
        got = run.get(frame, [])
        matched: set[int] = set()
        if ref_faces and got:
            iou = iou_matrix([f[1] for f in ref_faces], [f[1] for f in got])
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols, strict=True):
                if iou[r, c] >= MATCH_IOU:
                    d = np.abs(np.subtract(ref_faces[r][2], got[c][2]))
                    diffs.append(d)
                    per_track.setdefault(ref_faces[r][0], []).append(float(d.mean()))
                    matched.add(r)
        for r, face in enumerate(ref_faces):
            if r not in matched:
                missing.setdefault(face[0], []).append(frame)
    mean = np.mean(diffs, axis=0) if diffs else np.full(3, np.nan)
    worst = max((float(np.mean(v)) for v in per_track.values()), default=float("nan"))
    return AngleChange(
        float(mean[0]),
        float(mean[1]),
        float(mean[2]),
        worst,
        len(diffs) / total if total else 1.0,
        max((_longest_run(v) for v in missing.values()), default=0),
    )


def _longest_run(frames: list[int]) -> int:
    best = run = 0
    previous = None
    for frame in sorted(frames):
        run = run + 1 if previous is not None and frame == previous + 1 else 1
        best, previous = max(best, run), frame
    return best

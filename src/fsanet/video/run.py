"""A video's frames through decode -> detect -> crop + pose + track, in order.

The stages are plain functions over `VideoFrame`; `video_frames` chains them, either in
this thread (`pipelined=False`) or each in a thread of its own with a bounded queue
between (OpenCV's decoder and detector and the engines release the GIL, so on 2 cores
decode and detection overlap the engine). Both ways run the same stage functions on
the same frames in the same order, so their records are identical.

Real-time options: `detect_every` K detects on every K-th frame only, the tracker
carrying each face's box between (`FaceTracks.carried`: its motion model's prediction,
cropped and posed like a detection); `detect_size` N detects on the frame scaled down to
N pixels on its long side, boxes and landmarks scaled back. A camera's frames are handed
on newest-only (`Latest`): when the stages are slower than the camera, stale frames are
dropped, not queued, so latency stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fsanet.errors import FsanetError
from fsanet.tracking import FaceTracks, OneEuro
from fsanet.video.handoff import Bounded, Latest, background
from fsanet.vision.crop import crop_faces
from fsanet.vision.detect import Detection

if TYPE_CHECKING:
    from fsanet.predict import Face, HeadPoseEstimator

STAGES = ("decode", "detect", "crop", "pose", "write")
MIN_DETECT_SIZE = 64  # YuNet's smallest anchors need some pixels to look at


@dataclass(frozen=True)
class VideoOptions:
    """How video runs: pipelined or not, detection every k-th frame, at what size."""

    pipelined: bool = True
    detect_every: int = 1
    detect_size: int | None = None  # long side in pixels; None: the frame's own size
    depth: int = 4  # frames queued between two stages of a file

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise FsanetError(f"--detect-every must be at least 1, got {self.detect_every}")
        if self.detect_size is not None and self.detect_size < MIN_DETECT_SIZE:
            raise FsanetError(
                f"--detect-size must be at least {MIN_DETECT_SIZE} pixels, got {self.detect_size}"
            )
        if self.depth < 1:
            raise FsanetError(f"queue depth must be at least 1, got {self.depth}")

    @property
    def real_time(self) -> bool:
        return self.detect_every > 1 or self.detect_size is not None

    def describe(self) -> str:
        parts = ["pipelined" if self.pipelined else "sequential"]
        parts.append(f"detect every {self.detect_every}" if self.detect_every > 1 else "")
        parts.append(f"detect at {self.detect_size} px" if self.detect_size else "")
        return ", ".join(p for p in parts if p)


@dataclass
class VideoFrame:
    """One frame on its way through the stages."""

    index: int  # place in the stream (a camera's dropped frames leave gaps)
    image: np.ndarray
    time: float  # seconds: index / fps for a file, since the first frame for a camera
    started: float  # perf_counter() when its decode began: latency is measured from here
    detections: list[Detection] | None = None  # None: a frame the tracker carries
    total: int = 0  # faces the detector found, before max_faces
    faces: list[Face] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds spent


def decoded(
    read: Callable[[], tuple[bool, np.ndarray | None]],
    fps: float,
    *,
    camera: bool = False,
    max_frames: int | None = None,
) -> Iterator[VideoFrame]:
    """The decode stage: frames from `read` (a `cv2.VideoCapture.read`) until it fails."""
    first: float | None = None
    index = 0
    while max_frames is None or index < max_frames:
        started = time.perf_counter()
        ok, image = read()
        now = time.perf_counter()
        if not ok or image is None:
            return
        first = now if first is None else first
        # A file's frame time is its place in the stream; a camera's, the clock at capture.
        stamp = now - first if camera else index / fps
        yield VideoFrame(index, image, stamp, started, seconds={"decode": now - started})
        index += 1


class FaceStages:
    """The detect and pose stages of one video, with its tracks (one object per video)."""

    def __init__(
        self,
        estimator: HeadPoseEstimator,
        options: VideoOptions,
        smooth: OneEuro | None = None,
    ) -> None:
        self.estimator, self.options = estimator, options
        self.tracks = FaceTracks(smooth)  # ids start at 1 in every video

    def detect(self, frame: VideoFrame) -> VideoFrame:
        if frame.index % self.options.detect_every:
            return frame  # carried by the tracker in the pose stage
        start = time.perf_counter()
        image, size = frame.image, self.options.detect_size
        height, width = image.shape[:2]
        scale = 1.0 if size is None else min(1.0, size / max(height, width))
        if scale < 1.0:
            small = (round(width * scale), round(height * scale))
            image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        found = self.estimator.detector.detect(image)  # best score first
        if scale < 1.0:
            found = [_scaled(d, 1.0 / scale) for d in found]
        frame.total = len(found)
        frame.detections = found[: self.estimator.max_faces]
        frame.seconds["detect"] = time.perf_counter() - start
        return frame

    def pose(self, frame: VideoFrame) -> VideoFrame:
        from fsanet.predict import faces_from

        start = time.perf_counter()
        carried = frame.detections is None
        if carried:
            tracked = self.tracks.carried()
            ids, detections = [t for t, _ in tracked], [d for _, d in tracked]
        else:
            ids, detections = [], frame.detections or []
        est = self.estimator
        crops = crop_faces(frame.image, detections, est.crop, est.margin, est.normalize)
        posed = time.perf_counter()
        # All faces of a frame in one engine call.
        angles = est.engine(crops) if len(crops) else np.zeros((0, 3))
        faces = faces_from(detections, np.asarray(angles, np.float64))
        if carried:
            faces = [replace(f, track=t) for f, t in zip(faces, ids, strict=True)]
            frame.faces = self.tracks.follow(faces, frame.time)
        else:
            frame.faces = self.tracks.update(faces, frame.time)
        end = time.perf_counter()
        frame.seconds["crop"] = posed - start
        frame.seconds["pose"] = end - posed
        return frame


def _scaled(detection: Detection, factor: float) -> Detection:
    box = tuple(v * factor for v in detection.box)
    marks = None if detection.landmarks is None else detection.landmarks * factor
    return Detection(box, detection.score, marks)  # type: ignore[arg-type]


def video_frames(
    frames: Iterator[VideoFrame], stages: FaceStages, *, camera: bool = False
) -> Iterator[VideoFrame]:
    """`frames` through detect and pose, in order: in this thread, or pipelined.

    Pipelined, a file's frames wait in bounded queues (`options.depth`); a camera's are
    handed to detection newest-only, and `dropped` on the returned hand-off counts the
    frames skipped."""
    options = stages.options
    if not options.pipelined:
        return (stages.pose(stages.detect(f)) for f in frames)
    first = Latest() if camera else Bounded(options.depth)
    later = 1 if camera else options.depth  # a camera's frame waits for no other
    decoded_ = background(frames, hand=first)
    detected = background(_each(stages.detect, decoded_), later)
    posed = background(_each(stages.pose, detected), later)
    return _Counted(posed, first)


def _each(
    stage: Callable[[VideoFrame], VideoFrame], frames: Iterator[VideoFrame]
) -> Iterator[VideoFrame]:
    """map(), but closing `frames` when closed: a stopped chain stops every thread of it."""
    try:
        for frame in frames:
            yield stage(frame)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


class _Counted(Iterator[VideoFrame]):
    """An iterator over frames that says how many frames its first hand-off dropped."""

    def __init__(self, frames: Iterator[VideoFrame], first: Bounded | Latest) -> None:
        self._frames, self._first = frames, first

    @property
    def dropped(self) -> int:
        return self._first.dropped

    def __next__(self) -> VideoFrame:
        return next(self._frames)

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()

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

Pipelined, a file's frames are detected `detect_workers` at a time (each on its share of
the detector's threads, results in order), and consecutive frames are posed together, up
to `batch_frames` frames or `batch_crops` crops in one engine call (a camera's frames, one
at a time). The engine's angles of a crop barely depend on the crops beside it in a call
(bit for bit on the classroom crops checked; up to 3e-6° on AFLW2000 crops, against the
records' 0.01° rounding), so the records stay identical in the tests. With
`split_cores` (off by default, see VideoOptions), the stages share the cores instead of
each taking all of them (`ThreadShares`: OpenCV's pool for the detector, ONNX Runtime's
workers for the engine, by `core_split`, for as long as the pipeline runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.face import Face, faces_from
from fsanet.faces.options import VideoOptions
from fsanet.faces.tracking import FaceTracks, OneEuro
from fsanet.faces.video.cuts import SceneCuts
from fsanet.faces.video.handoff import Bounded, Latest, background, ordered_map
from fsanet.faces.vision.crop import crop_faces
from fsanet.faces.vision.detect import Detection

STAGES = ("decode", "detect", "crop", "pose", "write")


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
    cut: bool = False  # the first frame of a new scene (fsanet.faces.video.cuts)
    crops: np.ndarray | None = None  # between cropping and posing: its faces' crops


def decoded(
    read: Callable[[], tuple[bool, np.ndarray | None]],
    fps: float,
    *,
    camera: bool = False,
    max_frames: int | None = None,
    position: Callable[[], float] | None = None,
    cuts: SceneCuts | None = None,
) -> Iterator[VideoFrame]:
    """The decode stage: frames from `read` (a `cv2.VideoCapture.read`) until it fails.

    A file's frame time is the decoder's timestamp of the frame just read (`position`, in
    ms: OpenCV's CAP_PROP_POS_MSEC), so variable-rate files (a GIF's own frame delays) get
    their true times; where a container gives none that rises from frame to frame, every
    frame's time is index / fps. A camera's is the clock at capture. With `cuts`, each
    frame says whether it starts a new scene (decoding is the one stage that sees every
    frame in order)."""
    first: float | None = None
    index = 0
    last = -1.0
    stamps = position is not None and not camera
    while max_frames is None or index < max_frames:
        started = time.perf_counter()
        ok, image = read()
        now = time.perf_counter()
        if not ok or image is None:
            return
        first = now if first is None else first
        if camera:
            stamp = now - first
        else:
            at = position() / 1e3 if stamps and position is not None else None
            stamps = at is not None and at > last  # once they stop rising: index / fps
            stamp = at if stamps and at is not None else index / fps
            last = stamp
        cut = cuts is not None and cuts.is_cut(image)
        done = time.perf_counter()
        yield VideoFrame(index, image, stamp, started, seconds={"decode": done - started}, cut=cut)
        index += 1


class FaceStages:
    """The detect and pose stages of one video, with its tracks (one object per video).

    Posing is cut in two so that several frames can share one engine call: `prepare`
    crops a frame's faces and gives them their track ids (the tracker needs boxes only,
    and a carried frame's boxes come from the tracker as left by the frames before);
    `finish` runs the engine once on the crops of a group of prepared frames, in order,
    then smooths each frame's angles in order. `pose` is both for one frame."""

    def __init__(
        self,
        estimator: HeadPoseEstimator,
        options: VideoOptions,
        smooth: OneEuro | None = None,
    ) -> None:
        self.estimator, self.options = estimator, options
        self.tracks = FaceTracks()  # ids start at 1 in every video; no smoothing here
        # Smoothing follows the same tracker (its filters end with their tracks), applied
        # once the angles are known. A group is a few frames and a track ends only after
        # 15 unseen frames, so no filter ends earlier than it would frame by frame.
        self.smoothed = None if smooth is None else FaceTracks(smooth, self.tracks.tracker)

    def detect(self, frame: VideoFrame) -> VideoFrame:
        if frame.index % self.options.detect_every and not frame.cut:
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
        """Crop, pose (all faces of the frame in one engine call) and track one frame."""
        self.finish([self.prepare(frame)])
        return frame

    def prepare(self, frame: VideoFrame) -> VideoFrame:
        """Crop the frame's faces and give them track ids; angles come in `finish`."""
        start = time.perf_counter()
        if frame.cut:  # a new scene: no face carries its id (or its smoothing) across
            self.tracks.cut()
            if self.smoothed is not None:
                self.smoothed.cut()
        if frame.detections is None:  # carried
            tracked = self.tracks.carried()
            detections = [d for _, d in tracked]
            unposed = faces_from(detections, np.zeros((len(detections), 3)))
            faces = [replace(f, track=t) for f, (t, _) in zip(unposed, tracked, strict=True)]
        else:
            detections = frame.detections
            unposed = faces_from(detections, np.zeros((len(detections), 3)))
            faces = self.tracks.update(unposed, frame.time)  # ids only: no smoothing here
        tracked_at = time.perf_counter()
        est = self.estimator
        frame.crops = crop_faces(frame.image, detections, est.crop, est.margin, est.normalize)
        frame.faces = faces
        frame.seconds["crop"] = time.perf_counter() - tracked_at
        frame.seconds["pose"] = tracked_at - start  # tracking; the engine's share follows
        return frame

    def finish(self, group: list[VideoFrame]) -> list[VideoFrame]:
        """The crops of prepared frames through the engine in one call, angles to faces."""
        start = time.perf_counter()
        sizes = [len(f.faces) for f in group]
        crops = [f.crops for f in group if f.crops is not None and len(f.crops)]
        total = sum(sizes)
        engine = self.estimator.engine
        angles = np.asarray(engine(np.concatenate(crops)), np.float64) if total else None
        self.attach(group, angles)
        spent = time.perf_counter() - start  # shared by crop count (tracking already in)
        for frame, size in zip(group, sizes, strict=True):
            share = spent * size / total if total else spent / len(group)
            frame.seconds["pose"] = frame.seconds.get("pose", 0.0) + share
        return group

    def attach(self, group: list[VideoFrame], angles: np.ndarray | None) -> list[VideoFrame]:
        """Angles (rows in the order of the prepared frames' faces; None: no faces) to the
        faces, then smoothing, frame by frame in order. `finish` without the engine call, for
        callers that run the engine themselves (the server's stream, through its batcher)."""
        ends = np.cumsum([len(f.faces) for f in group])
        for frame, end in zip(group, ends, strict=True):
            size = len(frame.faces)
            rows = () if angles is None else angles[end - size : end]
            faces = [
                replace(f, yaw=float(a[0]), pitch=float(a[1]), roll=float(a[2]))
                for f, a in zip(frame.faces, rows, strict=True)
            ]
            if self.smoothed is not None:
                faces = self.smoothed.follow(faces, frame.time)
            frame.faces, frame.crops = faces, None
        return group

    def batched(self, frames: Iterator[VideoFrame]) -> Iterator[VideoFrame]:
        """Pose `frames` in groups of consecutive frames (`batch_frames`, `batch_crops`),
        in order; closing it closes `frames`."""
        most_frames, most_crops = self.options.batch_frames, self.options.batch_crops
        group: list[VideoFrame] = []
        crops = 0
        try:
            for frame in frames:
                n = len(self.prepare(frame).faces)
                if group and crops + n > most_crops:
                    yield from self.finish(group)
                    group, crops = [], 0
                group.append(frame)
                crops += n
                if len(group) >= most_frames or crops >= most_crops:
                    yield from self.finish(group)
                    group, crops = [], 0
            if group:
                yield from self.finish(group)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()


def core_split(cores: int) -> tuple[int, int]:
    """(detector threads, engine threads) for a pipeline on `cores` cores.

    The rule: half each, the odd core to the engine (it cuts a batch evenly across its
    workers; YuNet's parallel regions are smaller), at least one each. Decoding (FFmpeg's
    own threads) and writing take a few ms a frame, so they get no share. Which of detect
    and pose is heavier depends on the clip and the options (classroom: 56 vs 18 ms a frame
    at full size, 13 vs 23 at every 3rd frame and 640 px), so neither gets more for good.
    """
    detect = max(1, cores // 2)
    return detect, max(1, cores - detect)


class ThreadShares:
    """While a pipeline runs, the threads of its stages, then put back as they were.

    With `split`, the detector (YuNet's ONNX Runtime session, and OpenCV's pool) and the
    engine's workers get the shares of `core_split`. `cv2.setNumThreads` is process-wide
    (one thread pool with OpenCV's pthreads backend; OpenCV's docs: not thread-safe, not to
    be called from concurrent threads), so it is set before the stage threads start and
    restored once they have stopped: during the run, every OpenCV call of the process uses
    the detector's share. The engine's share applies to ONNX Runtime runners that cut a
    batch over their workers (`cores="split"`, which read their thread count at each call);
    other runners (ONNX Runtime `shared`, OpenVINO, TensorFlow) fix their threads when
    loaded and keep them. Then, with `detect_workers` > 1, the detector's threads are
    divided among that many concurrent detections (YuNet reads `threads` at each call)."""

    def __init__(
        self,
        engine: object,
        detector: object,
        cores: int | None = None,
        *,
        split: bool = True,
        detect_workers: int = 1,
    ) -> None:
        from fsanet.engine.backends.base import available_cpus

        self.detect, self.engine = core_split(cores or available_cpus())
        self.split, self.detect_workers = split, detect_workers
        self._runners = [
            runner
            for runner in getattr(engine, "runners", [])
            if split and runner.backend == "onnxruntime" and runner.cores == "split"
        ]
        self._detector: Any = detector if hasattr(detector, "threads") else None
        self._saved: tuple[int, int | None, list[int]] | None = None

    def apply(self) -> None:
        if self._saved is not None:
            return
        detector = self._detector
        saved = None if detector is None else detector.threads
        self._saved = (cv2.getNumThreads(), saved, [r.threads for r in self._runners])
        if self.split:
            cv2.setNumThreads(self.detect)
            for runner in self._runners:
                runner.threads = min(runner.threads, self.engine)
        if detector is not None:
            share = self.detect if self.split else detector.threads
            detector.threads = max(1, share // self.detect_workers)

    def restore(self) -> None:
        if self._saved is None:
            return
        opencv, detector, engine = self._saved
        cv2.setNumThreads(opencv)
        if self._detector is not None:
            self._detector.threads = detector
        for runner, threads in zip(self._runners, engine, strict=True):
            runner.threads = threads
        self._saved = None


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
    estimator = stages.estimator
    workers = 1 if camera else options.detect_workers  # a camera's newest frame, alone
    shares = ThreadShares(
        estimator.engine, estimator.detector, split=options.split_cores, detect_workers=workers
    )
    shares.apply()  # before any stage thread starts; restored once all have stopped
    first = Latest() if camera else Bounded(options.depth)
    later = 1 if camera else options.depth  # a camera's frame waits for no other
    decoded_ = background(frames, hand=first)
    if workers > 1:
        detected = background(ordered_map(stages.detect, decoded_, workers), later)
    else:
        detected = background(_each(stages.detect, decoded_), later)
    if camera or options.batch_frames == 1:
        posed = background(_each(stages.pose, detected), later)
    else:  # a file: latency does not matter, consecutive frames share engine calls
        posed = background(stages.batched(detected), later)
    return _Counted(posed, first, shares.restore)


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

    def __init__(
        self,
        frames: Iterator[VideoFrame],
        first: Bounded | Latest,
        ended: Callable[[], None] | None = None,
    ) -> None:
        self._frames, self._first, self._ended = frames, first, ended

    @property
    def dropped(self) -> int:
        return self._first.dropped

    def __next__(self) -> VideoFrame:
        try:
            return next(self._frames)
        except BaseException:
            self.close()  # the last frame, or a stage failed: every thread stops first
            raise

    def close(self) -> None:
        """Stop every stage thread, then undo what the pipeline set (`ThreadShares`)."""
        try:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
        finally:
            if self._ended is not None:
                self._ended, ended = None, self._ended
                ended()

"""The CPU work of a stream's frames, run in the vision threads: decode, scene cut, detect,
then crop and track (fsanet.faces.video's FaceStages, one per stream, as `fsanet predict`
runs a video), and the JSON of an answer in `predict`'s record schema."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fsanet.deploy.serve.limits import decode_image
from fsanet.deploy.serve.stream.access import StreamOptions
from fsanet.faces.face import Face
from fsanet.faces.options import OneEuro, VideoOptions
from fsanet.faces.predict import face_record
from fsanet.faces.sources import Source
from fsanet.faces.tracking import FaceTracks
from fsanet.faces.video import FaceStages, SceneCuts, VideoFrame

if TYPE_CHECKING:
    from fsanet.deploy.serve.config import Limits
    from fsanet.faces.estimator import HeadPoseEstimator

SOURCE = Source("camera", "stream", "stream")  # the records' "source"
_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


class StreamFaces:
    """One stream's video path: tracks, smoothing, scene cuts, detection every K-th frame.

    Frames go through `detect`, `prepare` and `finish` one at a time, in order (the stream
    poses one frame at a time); only the frames posed count for detect-every, so skipped
    frames never postpone a detection."""

    def __init__(
        self,
        estimator: HeadPoseEstimator,
        video: VideoOptions,
        options: StreamOptions,
        max_faces: int,
    ) -> None:
        kept = copy.copy(estimator)  # the same detector and engine, at most `max_faces` faces
        kept.max_faces = min(estimator.max_faces, max_faces)
        smooth = OneEuro() if options.smooth else None
        self.stages = FaceStages(kept, replace(video, detect_every=options.detect_every), smooth)
        self.cuts = None if video.cut_threshold is None else SceneCuts(video.cut_threshold)
        self.options = options
        self.posed = 0

    def apply(self, options: StreamOptions) -> None:
        """Options from an `options` message, from this frame on."""
        if options.detect_every != self.options.detect_every:
            video = replace(self.stages.options, detect_every=options.detect_every)
            self.stages.options = video
            self.posed = 0  # the next frame is detected
        if options.smooth != self.options.smooth:
            tracker = self.stages.tracks.tracker
            self.stages.smoothed = FaceTracks(OneEuro(), tracker) if options.smooth else None
        self.options = options

    def detect(self, data: bytes, time: float, started: float, limits: Limits) -> VideoFrame:
        """Decode (HttpError for the client's faults) and detect, unless the tracker carries
        this frame."""
        image = decode_image(data, limits)
        cut = self.cuts is not None and self.cuts.is_cut(image)
        frame = self.stages.detect(VideoFrame(self.posed, image, time, started, cut=cut))
        self.posed += 1
        return frame

    def expected_faces(self, frame: VideoFrame) -> int:
        """Faces `prepare` will crop: the detections, or the tracks to carry."""
        if frame.detections is not None:
            return len(frame.detections)
        return len(self.stages.tracks.tracker.ids)

    def prepare(self, frame: VideoFrame) -> np.ndarray:
        """Track ids and crops (float32, for the batcher); the picture is let go here."""
        self.stages.prepare(frame)
        crops = frame.crops if frame.crops is not None else np.zeros((0, 64, 64, 3), np.uint8)
        frame.image, frame.crops = _NO_IMAGE, None
        return crops.astype(np.float32)

    def finish(self, frame: VideoFrame, angles: np.ndarray | None) -> list[Face]:
        """The engine's angles to the faces, smoothed along their tracks."""
        self.stages.attach([frame], angles)
        return frame.faces


def frame_answer(
    index: int,
    time: float,
    skipped: int,
    faces: list[Face],
    *,
    rotation: bool,
    server_ms: float,
    size: tuple[int, int],
) -> str:
    """The answer to one frame: its faces as `fsanet predict` writes a video's records."""
    answer: dict[str, Any] = {
        "type": "frame",
        "frame": index,
        "time": round(time, 6),
        "skipped": skipped,
        "faces": [face_record(SOURCE, index, i, f, time, rotation) for i, f in enumerate(faces)],
        "server_ms": round(server_ms, 2),
        "width": size[0],
        "height": size[1],
    }
    return json.dumps(answer, separators=(",", ":"))


def error_answer(index: int, status: int, message: str) -> str:
    """One frame refused (the stream goes on)."""
    answer = {"type": "error", "frame": index, "error": message, "status": status}
    return json.dumps(answer, separators=(",", ":"))

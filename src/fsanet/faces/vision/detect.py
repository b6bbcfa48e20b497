"""Face detectors: one small interface, and YuNet (OpenCV Zoo's face detector).

YuNet runs on ONNX Runtime by default, with FaceDetectorYN's decoding and NMS redone in
numpy: the same faces as OpenCV's `cv2.FaceDetectorYN` (boxes, landmarks and scores within
2.4e-4 on every frame of the clips in ../shared/videos and all 2000 AFLW2000 photos; a
sample is tested) in about two thirds of its time (docs/VIDEO.md). `runtime="opencv"` runs
OpenCV's own detector.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from fsanet.assets.fetch import fetch
from fsanet.assets.zoo import YUNET
from fsanet.core.errors import FsanetError, InputError
from fsanet.faces.options import SCORE_THRESHOLD

RUNTIMES = ("onnxruntime", "opencv")
STRIDES = (8, 16, 32)  # YuNet's three heads; its input sides are padded to the largest
# YuNet's outputs: per head, scores (cls, obj), box offsets and landmark offsets per cell.
OUTPUTS = tuple(f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES)

# YuNet's five landmarks, in its output order (the subject's right eye comes first).
LANDMARK_NAMES = ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth")


@dataclass(frozen=True)
class Detection:
    """One face: box (x, y, w, h) in pixels, detector score, 5 x 2 landmarks (or None)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None


class Detector(Protocol):
    """Anything that finds faces in a BGR image, best score first."""

    def detect(self, image: np.ndarray) -> list[Detection]: ...


def check_image(image: object) -> np.ndarray:
    """A BGR uint8 H x W x 3 image (grayscale and BGRA are converted), or InputError."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a numpy BGR image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image has dtype {image.dtype}, expected uint8 BGR")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InputError(f"image has shape {image.shape}, expected H x W x 3 (BGR)")
    return image


class YuNet:
    """OpenCV Zoo's YuNet: boxes, scores and five landmarks.

    `score_threshold` 0.5 is OpenCV Zoo's demo default; `max_side` bounds the detector's
    input (larger images are scaled down for speed, coordinates are mapped back).
    `threads`: the cores ONNX Runtime uses for one image (default: all); it may be changed
    between calls. Safe to call from several threads.
    """

    name = "yunet"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        score_threshold: float = SCORE_THRESHOLD,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int = 1280,
        mirror: str | None = None,
        runtime: str = "onnxruntime",
        threads: int | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise FsanetError(f"score threshold must lie in [0, 1], got {score_threshold}")
        if runtime not in RUNTIMES:
            raise FsanetError(f"unknown detector runtime {runtime!r}: use one of {RUNTIMES}")
        self._path = Path(model) if model else fetch(YUNET, mirror)
        self.score_threshold, self.nms_threshold, self.top_k = score_threshold, nms_threshold, top_k
        self.max_side = max_side
        self.runtime = runtime
        if threads is None:
            from fsanet.engine.backends.base import available_cpus

            threads = available_cpus()
        self.threads = threads
        self._sessions: dict[int, Any] = {}  # ONNX Runtime: one session per thread count
        self._lock = threading.Lock()
        self._local = threading.local()  # OpenCV: one detector per thread (it is not safe)
        self._faces: Callable[[np.ndarray], np.ndarray | None] = (
            self._faces_onnxruntime if runtime == "onnxruntime" else self._faces_opencv
        )
        self._load()  # now, so a bad model file fails here

    def with_runtime(self, runtime: str) -> YuNet:
        """The same detector (model file, thresholds, threads) on another runtime."""
        return YuNet(
            self._path,
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            top_k=self.top_k,
            max_side=self.max_side,
            runtime=runtime,
            threads=self.threads,
        )

    def _load(self) -> None:
        if self.runtime == "opencv":
            self._opencv()
        else:
            self._session()

    def _session(self) -> Any:
        threads = max(1, self.threads)
        session = self._sessions.get(threads)
        if session is not None:
            return session
        import onnxruntime as ort

        with self._lock:
            if threads in self._sessions:
                return self._sessions[threads]
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # Idle workers sleep instead of spinning: the engine and the decoder want the
            # cores the moment a detection ends.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = ort.InferenceSession(
                    str(self._path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # onnxruntime raises its own unexported exception types
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise FsanetError(
                    f"{self._path} cannot be loaded as a YuNet model ({first})"
                ) from e
            missing = set(OUTPUTS) - {o.name for o in session.get_outputs()}
            if missing:
                raise FsanetError(
                    f"{self._path} is not a YuNet model: it has no output {sorted(missing)[0]}"
                )
            self._sessions[threads] = session
            return session

    def _opencv(self) -> cv2.FaceDetectorYN:
        net = getattr(self._local, "net", None)
        if net is not None:
            return net
        # OpenCV 5 warns on every load that its new graph engine ignores targets: noise.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            net = cv2.FaceDetectorYN.create(
                str(self._path), "", (320, 320),
                self.score_threshold, self.nms_threshold, self.top_k,
            )  # fmt: skip
        except cv2.error as e:
            raise FsanetError(f"{self._path} cannot be loaded as a YuNet model ({e})") from e
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._local.net = net
        return net

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = check_image(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            image = cv2.resize(
                image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
        faces = self._faces(image)
        if faces is None or not len(faces):
            return []
        out = []
        for row in faces[np.argsort(-faces[:, 14], kind="stable")]:
            box = tuple(float(v) / scale for v in row[:4])
            landmarks = row[4:14].reshape(5, 2).astype(np.float64) / scale
            out.append(Detection(box, float(row[14]), landmarks))  # type: ignore[arg-type]
        return out

    def _faces_opencv(self, image: np.ndarray) -> np.ndarray | None:
        net = self._opencv()
        net.setInputSize((image.shape[1], image.shape[0]))
        return net.detect(image)[1]

    def _faces_onnxruntime(self, image: np.ndarray) -> np.ndarray | None:
        """FaceDetectorYN's rows (x, y, w, h, 5 landmarks x y, score), from ONNX Runtime."""
        height, width = image.shape[:2]
        step = STRIDES[-1]
        padded = (-(-height // step) * step, -(-width // step) * step)
        blob = np.zeros((1, 3, *padded), np.float32)  # BGR, 0-255, zeros bottom and right
        blob[0, :, :height, :width] = image.transpose(2, 0, 1)
        session = self._session()
        feed = {session.get_inputs()[0].name: blob}
        outputs = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feed), strict=True))
        rows = [
            _decode(outputs, stride, padded[1] // stride, self.score_threshold)
            for stride in STRIDES
        ]
        faces = np.concatenate(rows)
        if len(faces) < 2:
            return faces
        # OpenCV runs NMS on the boxes cut to whole pixels; so do we, to keep the same faces.
        boxes = [[int(v) for v in row[:4]] for row in faces]
        keep = cv2.dnn.NMSBoxes(
            boxes, faces[:, 14].tolist(), self.score_threshold, self.nms_threshold,
            top_k=self.top_k,
        )  # fmt: skip
        return faces[np.asarray(keep, int).reshape(-1)]


def _decode(
    outputs: dict[str, np.ndarray], stride: int, columns: int, threshold: float
) -> np.ndarray:
    """One head's cells scoring at least `threshold`, as FaceDetectorYN decodes them."""
    cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0.0, 1.0)
    obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0.0, 1.0)
    score = np.sqrt(cls * obj)
    (cells,) = np.nonzero(score >= threshold)
    col = (cells % columns).astype(np.float32)[:, None]
    row = (cells // columns).astype(np.float32)[:, None]
    box = outputs[f"bbox_{stride}"][0, cells]
    marks = outputs[f"kps_{stride}"][0, cells].reshape(-1, 5, 2)
    size = np.exp(box[:, 2:4]) * stride
    centre = (np.hstack([col, row]) + box[:, :2]) * stride
    landmarks = (marks + np.stack([col, row], -1)) * stride
    return np.column_stack(
        [centre - size / 2, size, landmarks.reshape(-1, 10), score[cells]]
    ).astype(np.float32)

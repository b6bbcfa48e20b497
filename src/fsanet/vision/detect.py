"""Face detectors: one small interface, and YuNet through OpenCV's `cv2.FaceDetectorYN`."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from fsanet.errors import FsanetError, InputError
from fsanet.fetch import fetch
from fsanet.zoo import YUNET

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
    input (larger images are scaled down for speed, coordinates are mapped back). Safe to
    call from several threads: an OpenCV detector is not, so each thread gets its own.
    """

    name = "yunet"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int = 1280,
        mirror: str | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise FsanetError(f"score threshold must lie in [0, 1], got {score_threshold}")
        self._path = Path(model) if model else fetch(YUNET, mirror)
        self._settings = (score_threshold, nms_threshold, top_k)
        self._local = threading.local()
        self.score_threshold = score_threshold
        self.max_side = max_side
        self._net()  # load now, so a bad model file fails here

    def _net(self) -> cv2.FaceDetectorYN:
        net = getattr(self._local, "net", None)
        if net is not None:
            return net
        # OpenCV 5 warns on every load that its new graph engine ignores targets: noise.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            net = cv2.FaceDetectorYN.create(str(self._path), "", (320, 320), *self._settings)
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
        net = self._net()
        net.setInputSize((image.shape[1], image.shape[0]))
        _, faces = net.detect(image)
        if faces is None:
            return []
        out = []
        for row in faces[np.argsort(-faces[:, 14])]:
            box = tuple(float(v) / scale for v in row[:4])
            landmarks = row[4:14].reshape(5, 2).astype(np.float64) / scale
            out.append(Detection(box, float(row[14]), landmarks))  # type: ignore[arg-type]
        return out

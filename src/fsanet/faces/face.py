"""The face record: where a face is, how sure the detector was, and its head pose."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fsanet.faces.vision.detect import Detection
from fsanet.faces.vision.rotation import rotation_matrix


@dataclass(frozen=True)
class Face:
    """One face: box (x, y, w, h) in pixels, detector score, landmarks, angles in degrees.

    In video, `track` is the face's track id; with smoothing, yaw/pitch/roll are the
    smoothed angles and `raw` the engine's (yaw, pitch, roll)."""

    box: tuple[float, float, float, float]
    score: float
    yaw: float
    pitch: float
    roll: float
    landmarks: tuple[tuple[float, float], ...] | None = None
    track: int | None = None
    raw: tuple[float, float, float] | None = None

    def rotation_matrix(self) -> np.ndarray:
        """The 3x3 head-to-camera rotation of these angles (OpenCV's camera axes: x right,
        y down, z away from the camera); see docs/CONVENTIONS.md."""
        return rotation_matrix(self.yaw, self.pitch, self.roll)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "yaw": round(self.yaw, 2),
            "pitch": round(self.pitch, 2),
            "roll": round(self.roll, 2),
        }
        if self.landmarks is not None:
            out["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in self.landmarks]
        if self.track is not None:
            out["track"] = self.track
        if self.raw is not None:
            out["raw"] = {
                k: round(v, 2) for k, v in zip(("yaw", "pitch", "roll"), self.raw, strict=True)
            }
        return out

    def __str__(self) -> str:
        x, y, w, h = self.box
        return (
            f"Face(box=({x:.0f}, {y:.0f}, {w:.0f}, {h:.0f}), score={self.score:.2f}, "
            f"yaw={self.yaw:.1f}, pitch={self.pitch:.1f}, roll={self.roll:.1f})"
        )


def faces_from(detections: list[Detection], angles: np.ndarray) -> list[Face]:
    """Pair each detection with its row of [yaw, pitch, roll]."""
    return [
        Face(
            d.box,
            d.score,
            float(yaw),
            float(pitch),
            float(roll),
            None if d.landmarks is None else tuple(map(tuple, d.landmarks.tolist())),
        )
        for d, (yaw, pitch, roll) in zip(detections, angles, strict=True)
    ]


class Faces(list[Face]):
    """The faces of one image, best score first: a list, plus how many were detected.

    `truncated` is true when the detector found more than the estimator's `max_faces`
    (`total` of them) and only the best were kept."""

    def __init__(self, faces: list[Face] | tuple[Face, ...] = (), total: int | None = None):
        super().__init__(faces)
        self.total = len(self) if total is None else total

    @property
    def truncated(self) -> bool:
        return self.total > len(self)

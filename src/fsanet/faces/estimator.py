"""Faces and their head pose in one image: detector -> crops -> engine -> `Face` records."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fsanet.core.errors import FsanetError
from fsanet.faces.face import Face, Faces, faces_from
from fsanet.faces.options import CROP_RULES, DEFAULT_RULE, MAX_FACES, SCORE_THRESHOLD
from fsanet.faces.vision.crop import MARGIN, crop_faces
from fsanet.faces.vision.detect import Detection, Detector, YuNet, check_image
from fsanet.faces.vision.draw import draw_face

if TYPE_CHECKING:
    from fsanet.engine.pose import PoseEngine



class HeadPoseEstimator:
    """Faces and their head pose in a BGR image: `estimator(image) -> list[Face]`.

    By default YuNet (score threshold 0.5) finds the faces, each is cropped with the
    `thirds` rule (see `fsanet.faces.vision.crop`) and all faces of an image go through
    `engine` in one batch; pass your own `detector` to change it. (`fsanet.HeadPoseEstimator`
    also loads the fusion engine when none is given.)
    At most `max_faces` faces of an image are kept, the best scores (see `Faces.truncated`).
    """

    def __init__(
        self,
        engine: PoseEngine,
        detector: Detector | None = None,
        *,
        crop: str = DEFAULT_RULE,
        margin: float = MARGIN,
        normalize: bool = False,
        score_threshold: float = SCORE_THRESHOLD,
        max_faces: int = MAX_FACES,
        mirror: str | None = None,
    ) -> None:
        if max_faces < 1:
            raise FsanetError(f"max_faces must be at least 1, got {max_faces}")
        self.engine = engine
        self.detector = detector or YuNet(score_threshold=score_threshold, mirror=mirror)
        if crop not in CROP_RULES:  # fail now, not at the first face
            raise FsanetError(f"unknown crop rule '{crop}': choose one of {', '.join(CROP_RULES)}")
        self.crop, self.margin, self.normalize = crop, margin, normalize
        self.max_faces = max_faces

    def __call__(self, image: np.ndarray) -> Faces:
        image = check_image(image)
        detections = self.detector.detect(image)  # best score first
        kept = self.estimate(image, detections[: self.max_faces])
        return Faces(kept, total=len(detections))

    def estimate(self, image: np.ndarray, detections: list[Detection]) -> list[Face]:
        """Angles for faces already detected in `image` (one engine call for all of them)."""
        if not detections:
            return []
        crops = crop_faces(image, detections, self.crop, self.margin, self.normalize)
        return faces_from(detections, np.asarray(self.engine(crops), np.float64))

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> HeadPoseEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def annotate(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of `image` with every face's box and pose axes drawn."""
    out = image.copy()
    for face in faces:
        draw_face(out, face.box, face.yaw, face.pitch, face.roll, face.score, face.track)
    return out

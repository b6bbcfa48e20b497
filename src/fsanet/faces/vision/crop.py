"""From a face detection to FSA-Net's 64x64 input: estimate the landmark box, widen, crop.

FSA-Net was trained and is tested on "type1" crops: the bounding box of the face's
landmarks (brows to chin, ear to ear), widened by 0.6 of its width/height on each side.
A detector box is not that box, so each rule here first estimates the landmark box:

- `thirds` (default): a face detector's box (WIDER FACE convention) runs from about the
  hairline to the chin; by the classical canon of facial thirds the brows sit one third of
  the way down, so the landmark box is the detector box without its top third.
- `landmarks`: fit a similarity transform from an anthropometric five-point face template
  (average adult proportions) to the detector's five landmarks and map the template's
  landmark box (brows to chin, ear lobe to ear lobe) into the image.
- `demo`: the detector box itself, as FSA-Net's webcam demos do.

No constant here was fitted to AFLW2000; docs/END_TO_END.md has the measurements.
"""

from __future__ import annotations

import cv2
import numpy as np

from fsanet.assets.type1 import MARGIN, Box, crop_box
from fsanet.assets.zoo import INPUT_SIZE
from fsanet.core.errors import FsanetError
from fsanet.faces.options import CROP_RULES, DEFAULT_RULE
from fsanet.faces.vision.detect import Detection

# Average adult face in millimetres, x to the image right, y down, origin between the
# pupils (interpupillary ~62, pupil to nose tip ~42, mouth width ~50, pupil to mouth
# ~68; brows ~20 above the pupils, chin ~112 below, ear lobes ~68 either side).
# Order as YuNet's landmarks: the subject's right eye (image left) first.
_TEMPLATE = np.array([[-31.0, 0.0], [31.0, 0.0], [0.0, 42.0], [-25.0, 68.0], [25.0, 68.0]])
_TEMPLATE_BOX = np.array([[-68.0, -20.0], [68.0, -20.0], [68.0, 112.0], [-68.0, 112.0]])


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation + uniform scale + shift taking `src` points onto `dst`."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    a = float((s * d).sum())
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum())
    norm = float((s**2).sum())
    matrix = np.array([[a, -b], [b, a]]) / norm
    return matrix, dst_mean - src_mean @ matrix.T


def landmark_box(detection: Detection, rule: str = DEFAULT_RULE) -> Box:
    """The estimated type1 landmark box (x0, y0, x1, y1) of one detected face."""
    x, y, w, h = detection.box
    if rule == "thirds":
        return (x, y + h / 3.0, x + w, y + h)
    if rule == "demo":
        return (x, y, x + w, y + h)
    if rule == "landmarks":
        if detection.landmarks is None:
            raise FsanetError("the 'landmarks' crop needs a detector that gives five landmarks")
        matrix, shift = _similarity(_TEMPLATE, np.asarray(detection.landmarks, np.float64))
        corners = _TEMPLATE_BOX @ matrix.T + shift
        (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
        return (float(x0), float(y0), float(x1), float(y1))
    raise FsanetError(f"unknown crop rule '{rule}': choose one of {', '.join(CROP_RULES)}")


def crop_faces(
    image: np.ndarray,
    detections: list[Detection],
    rule: str = DEFAULT_RULE,
    margin: float = MARGIN,
    normalize: bool = False,
) -> np.ndarray:
    """All faces of one BGR image as an N x 64 x 64 x 3 uint8 batch, in detection order.

    `normalize` stretches each crop to the full 0-255 range, as FSA-Net's demos do.
    """
    height, width = image.shape[:2]
    crops = np.empty((len(detections), INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    for i, detection in enumerate(detections):
        x0, y0, x1, y1 = crop_box(landmark_box(detection, rule), width, height, margin)
        # A face at the very border can clip to nothing: keep at least one pixel.
        patch = image[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]
        crops[i] = cv2.resize(patch, (INPUT_SIZE, INPUT_SIZE))
        if normalize:
            crops[i] = cv2.normalize(crops[i], None, 0, 255, cv2.NORM_MINMAX)
    return crops

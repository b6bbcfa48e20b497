"""End-to-end AFLW2000: detect -> crop -> pose on the raw 450x450 photos, scored on labels.

Protocol (docs/END_TO_END.md says why): the 1969 images FSA-Net evaluates (all angles
within ±99°); each holds one labelled face, so the most confident detection at or above
the score threshold is taken. A face counts as found when such a detection exists and
its centre lies inside the labelled face's type1 crop box (so a detection of another
face is a miss). MAE is reported on the faces found, and over the whole set with every
miss scored as the prediction (0, 0, 0), the frontal pose a system without a face would
have to assume.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io

from fsanet.assets.aflw2000 import EVAL_ANGLE_LIMIT, _members, landmark_crop_box, pose_from_mat
from fsanet.assets.fetch import fetch
from fsanet.assets.zoo import AFLW2000_ZIP
from fsanet.core import progress
from fsanet.core.errors import DatasetError
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.measure.evaluate import AxisErrors

_RULE = "-" * 80


@dataclass(frozen=True)
class EndToEndReport:
    num_images: int
    num_found: int
    found: AxisErrors  # on the faces found
    whole: AxisErrors  # all images, misses scored as (0, 0, 0)
    crop: str
    score_threshold: float
    engine: str
    missed: tuple[str, ...]
    seconds: float

    @property
    def found_rate(self) -> float:
        return self.num_found / self.num_images if self.num_images else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "num_found": self.num_found,
            "found_rate": round(self.found_rate, 5),
            "found": self.found.to_dict(),
            "whole_set_misses_as_frontal": self.whole.to_dict(),
            "crop": self.crop,
            "score_threshold": self.score_threshold,
            "engine": self.engine,
            "missed": list(self.missed),
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        f, w = self.found, self.whole
        return "\n".join(
            [
                f"AFLW2000 end to end: YuNet (score >= {self.score_threshold:g}) -> "
                f"'{self.crop}' crop -> {self.engine}, {self.seconds:.1f} s",
                f"faces found {self.num_found}/{self.num_images} ({100 * self.found_rate:.2f}%)",
                "",
                f"{'scored on':<28}{'yaw':>8}{'pitch':>8}{'roll':>8}{'MAE':>8}",
                f"{'faces found':<28}{f.yaw:>8.2f}{f.pitch:>8.2f}{f.roll:>8.2f}{f.mae:>8.2f}",
                f"{'all, misses as (0,0,0)':<28}{w.yaw:>8.2f}{w.pitch:>8.2f}{w.roll:>8.2f}"
                f"{w.mae:>8.2f}",
                _RULE,
                f" MAE = {f.mae:.2f} on {self.num_found} found, {w.mae:.2f} on all "
                f"{self.num_images}",
                _RULE,
            ]
        )


def _centre_inside(box: tuple[float, float, float, float], crop: tuple[int, ...]) -> bool:
    x, y, w, h = box
    return crop[0] <= x + w / 2 <= crop[2] and crop[1] <= y + h / 2 <= crop[3]


def evaluate_end_to_end(
    estimator: HeadPoseEstimator,
    source: str | Path | None = None,
    num: int | None = None,
    mirror: str | None = None,
) -> EndToEndReport:
    """Score `estimator` on the AFLW2000-3D release (zip or folder; default: fetched).

    `num` limits the run to the first `num` evaluated images.
    """
    source = Path(source) if source is not None else fetch(AFLW2000_ZIP, mirror)
    if not source.exists():
        raise DatasetError(f"{source} does not exist: give the AFLW2000-3D zip or its folder")
    predictions, labels, missed = [], [], []
    start = time.perf_counter()
    with progress.bar(total=num or 1969, desc="end to end", unit="img") as bar:
        for name, jpg, mat_bytes in _members(source):
            mat = scipy.io.loadmat(io.BytesIO(mat_bytes))
            label = pose_from_mat(mat, f"{name}.mat")
            if np.any(np.abs(label) > EVAL_ANGLE_LIMIT):
                continue
            if num is not None and len(labels) == num:
                break
            image = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"{name}.jpg cannot be decoded: the release is damaged")
            height, width = image.shape[:2]
            truth = landmark_crop_box(np.asarray(mat["pt2d"], np.float64), width, height)
            detections = estimator.detector.detect(image)[:1]
            labels.append(label)
            if detections and _centre_inside(detections[0].box, truth):
                face = estimator.estimate(image, detections)[0]
                predictions.append([face.yaw, face.pitch, face.roll])
            else:
                predictions.append([np.nan] * 3)
                missed.append(name)
            bar.update()
    pred, lab = np.array(predictions, np.float64).reshape(-1, 3), np.array(labels).reshape(-1, 3)
    hit = ~np.isnan(pred[:, 0])
    return EndToEndReport(
        num_images=len(lab),
        num_found=int(hit.sum()),
        found=AxisErrors.between(pred[hit], lab[hit]),
        whole=AxisErrors.between(np.where(hit[:, None], pred, 0.0), lab),
        crop=estimator.crop,
        score_threshold=float(getattr(estimator.detector, "score_threshold", float("nan"))),
        engine=getattr(estimator.engine, "name", type(estimator.engine).__name__),
        missed=tuple(missed),
        seconds=time.perf_counter() - start,
    )

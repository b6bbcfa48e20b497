"""End-to-end AFLW2000 on a subset: detect -> crop -> pose against the labels."""

from __future__ import annotations

import json

import pytest

from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.options import E2E_SCORE_THRESHOLD
from fsanet.measure.endtoend import evaluate_end_to_end

pytestmark = pytest.mark.real


def test_first_200_photos(fusion_engine: PoseEngine) -> None:
    estimator = HeadPoseEstimator(fusion_engine, score_threshold=E2E_SCORE_THRESHOLD)
    report = evaluate_end_to_end(estimator, num=200)
    assert report.num_images == 200 and report.num_found >= 198
    assert report.found.mae < 5.5  # the full set: 5.06 (docs/END_TO_END.md)
    assert report.whole.mae >= report.found.mae - 0.5
    assert len(report.missed) == report.num_images - report.num_found
    data = json.loads(json.dumps(report.to_dict()))
    assert data["num_found"] == report.num_found and data["crop"] == "thirds"
    assert "faces found" in str(report) and "misses as (0,0,0)" in str(report)

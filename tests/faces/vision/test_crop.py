"""Crop rules: the estimated landmark box, widening and clipping, the 64x64 batch."""

from __future__ import annotations

import numpy as np
import pytest

from fsanet.core.errors import FsanetError
from fsanet.faces.vision.crop import _TEMPLATE, _TEMPLATE_BOX, crop_box, crop_faces, landmark_box
from fsanet.faces.vision.detect import Detection


def test_thirds_rule_drops_the_forehead_third() -> None:
    assert landmark_box(Detection((10.0, 20.0, 30.0, 60.0), 0.9)) == (10.0, 40.0, 40.0, 80.0)


def test_demo_rule_is_the_detector_box() -> None:
    assert landmark_box(Detection((10.0, 20.0, 30.0, 60.0), 0.9), "demo") == (10, 20, 40, 80)


def test_landmarks_rule_maps_the_template_box_through_the_face_similarity() -> None:
    # The template itself, scaled by 2 and shifted: the box must follow exactly.
    points = _TEMPLATE * 2.0 + [100.0, 50.0]
    box = landmark_box(Detection((0, 0, 1, 1), 0.9, points), "landmarks")
    expected = _TEMPLATE_BOX * 2.0 + [100.0, 50.0]
    np.testing.assert_allclose(box, (*expected.min(0), *expected.max(0)))


def test_landmarks_rule_needs_landmarks_and_rules_are_checked() -> None:
    with pytest.raises(FsanetError, match="five landmarks"):
        landmark_box(Detection((0, 0, 10, 10), 0.9), "landmarks")
    with pytest.raises(FsanetError, match="unknown crop rule 'wide'"):
        landmark_box(Detection((0, 0, 10, 10), 0.9), "wide")


def test_crop_box_widens_by_the_margin_and_clips() -> None:
    assert crop_box((100.0, 100.0, 200.0, 150.0), 1000, 1000) == (40, 70, 260, 180)
    assert crop_box((0.0, 0.0, 100.0, 100.0), 120, 110) == (0, 0, 119, 109)


def test_crop_faces_batches_every_face_even_at_the_border() -> None:
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    faces = [Detection((10, 10, 40, 40), 0.9), Detection((115, 85, 30, 30), 0.6)]
    crops = crop_faces(image, faces)
    assert crops.shape == (2, 64, 64, 3) and crops.dtype == np.uint8
    assert crop_faces(image, []).shape == (0, 64, 64, 3)


def test_normalize_stretches_to_the_full_range() -> None:
    image = np.full((100, 100, 3), 100, np.uint8)
    image[40:60, 40:60] = 140
    crop = crop_faces(image, [Detection((30, 30, 40, 40), 0.9)], normalize=True)[0]
    assert crop.min() == 0 and crop.max() == 255

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
    # Each pixel says where it is: blue = 2x, green = 2y, red = 77. A crop's blue and green
    # ranges are then the columns and rows it was cut from.
    ys, xs = np.mgrid[0:90, 0:120]
    image = np.dstack([2 * xs, 2 * ys, np.full_like(xs, 77)]).astype(np.uint8)
    faces = [Detection((10, 10, 40, 40), 0.9), Detection((115, 85, 30, 30), 0.6)]
    crops = crop_faces(image, faces)
    assert crops.shape == (2, 64, 64, 3) and crops.dtype == np.uint8
    # By hand: thirds drops the top third of the box, then 0.6 of its width and height is
    # added each side and the result clipped to the image (x in 0..119, y in 0..89).
    # Face 1: (10, 23.3)-(50, 50) -> x -14..74, y 7.3..66 -> columns 0..73, rows 7..65.
    # Face 2, past the border: (115, 95)-(145, 115) -> columns 97..118, rows 83..88.
    for crop, (x0, x1, y0, y1) in zip(crops, [(0, 73, 7, 65), (97, 118, 83, 88)], strict=True):
        assert (crop[..., 0].min(), crop[..., 0].max()) == (2 * x0, 2 * x1)
        assert (crop[..., 1].min(), crop[..., 1].max()) == (2 * y0, 2 * y1)
        assert (crop[..., 2] == 77).all()
        # Left to right and top to bottom, as in the image (not flipped or transposed).
        assert (np.diff(crop[..., 0].astype(int), axis=1) >= 0).all()
        assert (np.diff(crop[..., 1].astype(int), axis=0) >= 0).all()
    assert crop_faces(image, []).shape == (0, 64, 64, 3)


def test_normalize_stretches_to_the_full_range() -> None:
    image = np.full((100, 100, 3), 100, np.uint8)
    image[40:60, 40:60] = 140
    crop = crop_faces(image, [Detection((30, 30, 40, 40), 0.9)], normalize=True)[0]
    assert crop.min() == 0 and crop.max() == 255

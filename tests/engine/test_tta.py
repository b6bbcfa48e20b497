"""The numpy side of TTA: names, mirroring, the reference average, the option's check."""

from __future__ import annotations

import numpy as np
import pytest

from fsanet.convert.options import BuildOptions
from fsanet.core.errors import FsanetError
from fsanet.engine.tta import (
    check_mode,
    flip_average,
    is_view,
    mirror_images,
    unmirror_angles,
    view_name,
)


def test_mirror_flips_left_and_right_only():
    images = np.arange(2 * 2 * 3 * 3).reshape(2, 2, 3, 3)
    mirrored = mirror_images(images)
    assert mirrored[0, 0, 0].tolist() == images[0, 0, 2].tolist()
    assert mirrored[1, 1, 2].tolist() == images[1, 1, 0].tolist()
    assert (mirror_images(mirrored) == images).all() and mirrored.flags.c_contiguous


def test_flip_average_of_a_symmetric_predictor():
    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        # Looks only at how the left half differs from the right: mirroring negates it.
        left = images[:, :, :1].mean(axis=(1, 2, 3))
        right = images[:, :, -1:].mean(axis=(1, 2, 3))
        side = left - right
        return {"fusion": np.stack([side, np.full_like(side, 5.0), 2 * side], axis=1)}

    images = np.random.default_rng(0).uniform(0, 255, (4, 3, 3, 3))
    results = flip_average(predict, images)
    # A head turned the other way in the mirror: yaw and roll agree once negated back.
    np.testing.assert_allclose(results["fusion"], results["fusion/crop"])
    np.testing.assert_allclose(results["fusion/mirror"], results["fusion/crop"])
    assert unmirror_angles(np.array([[10.0, 20.0, 30.0]])).tolist() == [[-10.0, 20.0, -30.0]]


def test_view_names():
    assert view_name("fusion", "crop") == "fusion/crop"
    assert is_view("fusion/crop") and not is_view("fusion") and not is_view("noS")


def test_an_unknown_mode_is_one_clear_line():
    assert check_mode("flip") == "flip"
    with pytest.raises(FsanetError, match="unknown test-time augmentation 'rotate': choose none"):
        BuildOptions.create(tta="rotate")


def test_flip_is_its_own_engine_in_the_cache():
    plain, flip = BuildOptions.create(), BuildOptions.create(tta="flip")
    assert plain.key() != flip.key()
    assert "-flip-" in flip.artifact_dir().name and "-flip-" not in plain.artifact_dir().name

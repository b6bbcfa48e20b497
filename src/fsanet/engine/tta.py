"""Test-time augmentation: average FSA-Net's angles on a crop and on its mirror image.

A head seen in a mirror has the same pitch and the opposite yaw and roll, so the prediction
on the horizontally flipped crop, with yaw and roll negated, estimates the same pose. Their
mean is a parameter-free improvement (AFLW2000 fusion MAE 5.07 -> 4.97 with the paper's
weights). An engine built with `tta="flip"` does this inside its graph
(`fsanet.convert.tta_graph.add_flip`): one call on N crops runs 2N through the network and returns
N averaged angles, plus each view on its own (`<output>/crop`, `<output>/mirror`).

This module is the numpy side (names and the reference computation); it imports no ONNX.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NONE = "none"
FLIP = "flip"
TTA_MODES = (NONE, FLIP)

# The engine's extra outputs: each output's angles on the crop alone and on its mirror image
# (yaw and roll already negated), named `<output>/<view>`.
VIEWS = ("crop", "mirror")
VIEW_SEPARATOR = "/"

# A mirrored head: yaw and roll change sign, pitch does not (the angles are yaw, pitch, roll).
MIRROR_SIGNS = np.array([-1.0, 1.0, -1.0], np.float32)
WIDTH_AXIS = 2  # crops are N x H x W x C


def check_mode(mode: str) -> str:
    from fsanet.core.errors import FsanetError

    if mode not in TTA_MODES:
        raise FsanetError(f"unknown test-time augmentation '{mode}': choose {', '.join(TTA_MODES)}")
    return mode


def engine_mode(extra: dict) -> str:
    """The TTA an engine was built with, from its manifest's `extra` block."""
    return extra.get("tta", {}).get("mode", NONE)


def view_name(output: str, view: str) -> str:
    return f"{output}{VIEW_SEPARATOR}{view}"


def is_view(name: str) -> bool:
    """Whether an engine output name is a TTA view rather than a variant or the fusion."""
    return VIEW_SEPARATOR in name


def mirror_images(images: np.ndarray) -> np.ndarray:
    """The crops flipped left to right."""
    return np.ascontiguousarray(images[:, :, ::-1, :])


def unmirror_angles(angles: np.ndarray) -> np.ndarray:
    """Angles predicted on a mirrored crop, turned back into the original crop's frame."""
    return angles * MIRROR_SIGNS


def flip_average(
    predict: Callable[[np.ndarray], dict[str, np.ndarray]], images: np.ndarray
) -> dict[str, np.ndarray]:
    """The reference for a flip engine: two calls of a plain `predict` (name -> N x 3) and a
    numpy average; each output comes with its two views, as a flip engine returns them."""
    crop = predict(images)
    mirror = predict(mirror_images(images))
    results: dict[str, np.ndarray] = {}
    for name, angles in crop.items():
        mirrored = unmirror_angles(mirror[name])
        results[name] = (angles + mirrored) / 2
        results[view_name(name, "crop")] = angles
        results[view_name(name, "mirror")] = mirrored
    return results

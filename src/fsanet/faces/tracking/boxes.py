"""Box geometry for the tracker: boxes are (x, y, w, h) in pixels, as the detector gives."""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` (N x 4) with every box in `b` (M x 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0.0, None)
    h = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0.0, None)
    inter = w * h
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance between box centres, in units of the `a` box's size (sqrt of its area)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ca = a[:, :2] + a[:, 2:] / 2
    cb = b[:, :2] + b[:, 2:] / 2
    size = np.sqrt(np.maximum(a[:, 2] * a[:, 3], 1e-12))
    return np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1) / size[:, None]


def size_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max(area_a / area_b, area_b / area_a) for every pair: 1 for boxes of one size."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.maximum(a[:, 2] * a[:, 3], 1e-12)[:, None]
    area_b = np.maximum(b[:, 2] * b[:, 3], 1e-12)[None, :]
    return np.maximum(area_a / area_b, area_b / area_a)

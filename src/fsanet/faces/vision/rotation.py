"""FSA-Net's angles as a rotation matrix, and back (see docs/CONVENTIONS.md).

The labels FSA-Net learned (300W-LP, AFLW2000-3D) are yaw, pitch, roll in degrees; in the
image, a positive yaw turns the nose to the image's left, a positive pitch raises it and a
positive roll tilts the head clockwise on screen. As a matrix, in OpenCV's camera frame
(x to the image's right, y down, z away from the camera):

    R = Rx(-pitch) @ Ry(yaw) @ Rz(roll)

with the right-handed elementary rotations below. R maps head coordinates to camera
coordinates: column 0 is the head's x axis (towards the subject's left ear), column 1 its
y axis (down, towards the chin), column 2 its z axis (from the face into the head), so the
nose points along -R[:, 2]. The order and signs were checked against AFLW2000's fitted 3D
landmarks (median 2.1 degrees from the Procrustes rotation; other orders 22-32 degrees).
"""

from __future__ import annotations

import math

import numpy as np


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The 3x3 head-to-camera rotation of FSA-Net's angles (degrees)."""
    y, p, r = math.radians(yaw), math.radians(pitch), math.radians(roll)
    return _rx(-p) @ _ry(y) @ _rz(r)


def angles_from_matrix(matrix: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from a rotation made by `rotation_matrix`.

    Yaw comes back in [-90, 90]; at exactly +-90 (gimbal lock) pitch and roll are not
    separable and roll is reported as 0.
    """
    m = np.asarray(matrix, np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"expected a 3x3 matrix, got shape {m.shape}")
    # Row 0 of Rx(-p) Ry(y) Rz(r) is row 0 of Ry(y) Rz(r): [cy cr, -cy sr, sy].
    yaw = math.asin(max(-1.0, min(1.0, m[0, 2])))
    if math.cos(yaw) < 1e-9:
        return math.degrees(yaw), math.degrees(math.atan2(-m[2, 1], m[1, 1])), 0.0
    roll = math.atan2(-m[0, 1], m[0, 0])
    # Column 2 is Rx(-p) [sy, 0, cy] = [sy, sp cy, cp cy].
    pitch = math.atan2(m[1, 2], m[2, 2])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def image_axes(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The head's three drawn axes as image directions (x right, y down), 3 x 2:
    x (to the subject's left ear), y (down), and the nose (out of the face)."""
    m = rotation_matrix(yaw, pitch, roll)
    return np.stack([m[:2, 0], m[:2, 1], -m[:2, 2]])

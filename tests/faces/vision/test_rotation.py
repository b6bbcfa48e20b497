"""FSA-Net's angle convention: the rotation matrix, the drawn axes, and the AFLW2000 labels."""

from __future__ import annotations

import io
import itertools
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fsanet.assets.aflw2000 import pose_from_mat
from fsanet.faces.face import Face
from fsanet.faces.vision.draw import draw_axis
from fsanet.faces.vision.rotation import angles_from_matrix, image_axes, rotation_matrix

GRID = list(itertools.product((-85, -40, 0, 30, 89), (-70, -15, 0, 45), (-60, 0, 20, 80)))


@pytest.mark.parametrize(("yaw", "pitch", "roll"), GRID)
def test_the_matrix_is_a_rotation_and_gives_its_angles_back(yaw, pitch, roll) -> None:
    m = rotation_matrix(yaw, pitch, roll)
    assert np.allclose(m @ m.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(m) == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(angles_from_matrix(m), (yaw, pitch, roll), atol=1e-9)


def test_gimbal_lock_still_rebuilds_the_same_matrix() -> None:
    m = rotation_matrix(90.0, 20.0, 30.0)
    yaw, pitch, roll = angles_from_matrix(m)
    assert yaw == pytest.approx(90.0) and roll == 0.0
    assert np.allclose(rotation_matrix(yaw, pitch, roll), m, atol=1e-12)
    with pytest.raises(ValueError, match="3x3"):
        angles_from_matrix(np.eye(4))


def test_frontal_is_the_identity_and_face_has_the_same_matrix() -> None:
    assert np.allclose(rotation_matrix(0, 0, 0), np.eye(3))
    face = Face((0, 0, 10, 10), 0.9, 30.0, -10.0, 5.0)
    assert np.array_equal(face.rotation_matrix(), rotation_matrix(30.0, -10.0, 5.0))


@pytest.mark.parametrize(
    ("angles", "axis", "sign"),
    [
        ((30, 0, 0), (2, 0), -1),  # yaw +: the nose turns to the image's left
        ((-30, 0, 0), (2, 0), +1),
        ((0, 30, 0), (2, 1), -1),  # pitch +: the nose goes up (image y is down)
        ((0, -30, 0), (2, 1), +1),
        ((0, 0, 30), (0, 1), +1),  # roll +: clockwise on screen, the x axis dips
        ((0, 0, -30), (0, 1), -1),
    ],
)
def test_signs_in_the_image(angles, axis, sign) -> None:
    row, col = axis
    value = image_axes(*angles)[row, col]
    assert np.sign(value) == sign and abs(value) == pytest.approx(0.5, abs=1e-9)


def _drawn_direction(image: np.ndarray, channel: int, centre: float) -> np.ndarray:
    """Mean direction from the centre of the pixels of one pure colour."""
    others = [c for c in range(3) if c != channel]
    rows, cols = np.nonzero((image[..., channel] > 200) & (image[..., others] < 60).all(-1))
    far = np.hypot(cols - centre, rows - centre) > 10  # away from where the lines overlap
    v = np.array([cols[far].mean() - centre, rows[far].mean() - centre])
    return v / np.linalg.norm(v)


@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"), [(30, 0, 0), (0, 30, 0), (0, 0, 30), (-40, 20, -25)]
)
def test_drawn_axes_follow_the_matrix(yaw, pitch, roll) -> None:
    image = np.zeros((301, 301, 3), np.uint8)
    draw_axis(image, yaw, pitch, roll, (150, 150), 120, thickness=1)
    axes = image_axes(yaw, pitch, roll)
    for (dx, dy), channel in zip(axes, (2, 1, 0), strict=True):  # red x, green y, blue nose
        if np.hypot(dx, dy) < 0.3:  # seen end-on: too short to measure
            continue
        want = np.array([dx, dy]) / np.hypot(dx, dy)
        assert _drawn_direction(image, channel, 150) @ want > 0.995


# --- the convention checked against the data ----------------------------------------------

# AFLW's 21 hand-placed landmarks (pt2d), 0-based: eye centres, nose centre, mouth corners.
EYE_A, EYE_B, NOSE, MOUTH_A, MOUTH_B = 7, 10, 14, 17, 19


def _aflw(shared: Path, limit: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(label yaw/pitch/roll, pt2d, pt3d_68) of the first `limit` AFLW2000 images."""
    out = []
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        names = sorted(n for n in z.namelist() if re.search(r"image\d+\.mat$", n))[:limit]
        for name in names:
            mat = scipy.io.loadmat(io.BytesIO(z.read(name)))
            out.append((pose_from_mat(mat, name), mat["pt2d"].astype(float), mat["pt3d_68"]))
    return out


@pytest.mark.real
def test_label_signs_match_the_hand_placed_landmarks(shared: Path) -> None:
    yaw_votes, roll_votes, up, down = [], [], [], []
    for (yaw, pitch, roll), pt, _ in _aflw(shared, 1000):
        if (pt[:, [EYE_A, EYE_B, NOSE, MOUTH_A, MOUTH_B]] <= 0).any():
            continue  # a hidden landmark
        left, right = sorted((pt[:, EYE_A], pt[:, EYE_B]), key=lambda p: p[0])
        eyes, mouth = (left + right) / 2, (pt[:, MOUTH_A] + pt[:, MOUTH_B]) / 2
        nose_x = pt[0, NOSE] - (eyes[0] + mouth[0]) / 2
        if abs(yaw) > 30:  # the nose shifts the way the drawn nose axis points
            yaw_votes.append(np.sign(nose_x) == np.sign(image_axes(yaw, pitch, roll)[2, 0]))
        if abs(roll) > 20 and abs(yaw) < 30:  # the eye line turns the way the x axis does
            tilt = np.arctan2(right[1] - left[1], right[0] - left[0])
            roll_votes.append(np.sign(tilt) == np.sign(image_axes(yaw, pitch, roll)[0, 1]))
        if abs(yaw) < 30 and abs(pitch) > 20:  # looking up brings the nose near the eyes
            ratio = (pt[1, NOSE] - eyes[1]) / (mouth[1] - eyes[1])
            (up if pitch > 0 else down).append(ratio)
    assert len(yaw_votes) > 30 and np.mean(yaw_votes) > 0.97
    assert len(roll_votes) > 30 and np.mean(roll_votes) > 0.97
    assert len(up) > 5 and len(down) > 5 and np.mean(up) + 0.2 < np.mean(down)


@pytest.mark.real
def test_matrix_order_matches_the_fitted_3d_landmarks(shared: Path) -> None:
    """Relative rotations between AFLW2000's fitted 3D landmarks (z negated: the fit's z
    points at the viewer) agree with Rx(-pitch) Ry(yaw) Rz(roll), and not with other orders."""

    def rigid(points: np.ndarray) -> np.ndarray:
        p = points * np.array([[1.0], [1.0], [-1.0]])
        p = p - p.mean(1, keepdims=True)
        return p / np.linalg.norm(p)

    def procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        u, _, vt = np.linalg.svd(b @ a.T)
        return u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt

    data = _aflw(shared, 600)
    ref_pose, _, ref3d = min(data, key=lambda d: np.abs(d[0]).max())
    assert np.abs(ref_pose).max() < 5
    ours, swapped = [], []
    for pose, _, pts3d in data:
        if np.abs(pose).max() > 99 or np.sort(np.abs(pose))[-2] < 20:
            continue  # two large angles tell the orders apart
        seen = procrustes(rigid(ref3d), rigid(pts3d))
        for errors, make in ((ours, rotation_matrix), (swapped, _roll_last)):
            want = make(*pose) @ make(*ref_pose).T
            cos = (np.trace(seen.T @ want) - 1) / 2
            errors.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    assert len(ours) > 50
    assert np.median(ours) < 10 and np.median(swapped) > 3 * np.median(ours), (
        np.median(ours),
        np.median(swapped),
    )


def _roll_last(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The other common order, Rz(roll) Ry(yaw) Rx(-pitch), for comparison."""
    m_roll = rotation_matrix(0, 0, roll)
    return m_roll @ rotation_matrix(yaw, 0, 0) @ rotation_matrix(0, pitch, 0)

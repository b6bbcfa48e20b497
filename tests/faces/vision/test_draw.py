"""Drawing: FSA-Net's axis convention and the annotated face."""

from __future__ import annotations

import numpy as np
import pytest

from fsanet.faces.vision.draw import draw_axis, draw_face


def _ends(image: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns where one pure colour channel was drawn."""
    others = [c for c in range(3) if c != channel]
    mask = (image[..., channel] > 200) & (image[..., others] < 60).all(-1)
    return np.nonzero(mask)


def test_frontal_pose_draws_x_right_and_y_down() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    draw_axis(image, 0.0, 0.0, 0.0, (100, 100), 50)
    red_rows, red_cols = _ends(image, 2)
    green_rows, green_cols = _ends(image, 1)
    assert red_cols.max() >= 148 and abs(red_rows.mean() - 100) < 2
    assert green_rows.max() >= 148 and abs(green_cols.mean() - 100) < 2


def test_yaw_turns_the_face_axis_sideways() -> None:
    # FSA-Net mirrors yaw for the image: a positive yaw points the blue axis to image left.
    image = np.zeros((200, 200, 3), np.uint8)
    draw_axis(image, 45.0, 0.0, 0.0, (100, 100), 50)
    _, blue_cols = _ends(image, 0)
    assert blue_cols.min() < 70


def test_draw_face_marks_the_box_and_the_label() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    draw_face(image, (50, 60, 80, 100), 10.0, -5.0, 3.0, 0.93)
    assert (image[160, 52:80] == 255).all()  # the box's bottom edge, left of the y axis
    assert image[:60].any()  # the label above it


@pytest.mark.parametrize(
    ("angle", "label"), [(-0.15, "+0"), (-0.5, "+0"), (-0.6, "-1"), (12.4, "+12"), (-0.0, "+0")]
)
def test_labels_never_show_minus_zero(angle, label):
    from fsanet.faces.vision.draw import _degrees

    assert _degrees(angle) == label

"""Drawing results on images: the face box and the three pose axes, FSA-Net's convention."""

from __future__ import annotations

import cv2
import numpy as np

from fsanet.faces.vision.rotation import image_axes

_RED, _GREEN, _BLUE, _WHITE = (0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)


def draw_axis(
    image: np.ndarray,
    yaw: float,
    pitch: float,
    roll: float,
    centre: tuple[float, float],
    size: float,
    thickness: int = 2,
) -> None:
    """Draw the head's x (red, to its left ear), y (green, down) and nose (blue, out of the
    face) axes from `centre`: the columns of `rotation_matrix` seen from the camera, the
    same picture as FSA-Net's and Hopenet's demos (docs/CONVENTIONS.md).
    """
    cx, cy = centre
    for (dx, dy), colour in zip(image_axes(yaw, pitch, roll), (_RED, _GREEN, _BLUE), strict=True):
        end = (round(cx + size * dx), round(cy + size * dy))
        cv2.line(image, (round(cx), round(cy)), end, colour, thickness, cv2.LINE_AA)


def _degrees(angle: float) -> str:
    """Whole degrees with a sign; an angle that rounds to zero is "+0", never "-0"."""
    return f"{round(angle) + 0:+d}"


def draw_face(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    yaw: float,
    pitch: float,
    roll: float,
    score: float | None = None,
    track: int | None = None,
) -> None:
    """Box, axes from the box centre (half the box size long) and a short label (track id
    first when given), in place."""
    x, y, w, h = box
    thickness = max(1, round(max(image.shape[:2]) / 400))
    cv2.rectangle(image, (round(x), round(y)), (round(x + w), round(y + h)), _WHITE, thickness)
    draw_axis(image, yaw, pitch, roll, (x + w / 2, y + h / 2), max(w, h) / 2, thickness + 1)
    label = f"y{_degrees(yaw)} p{_degrees(pitch)} r{_degrees(roll)}"
    if track is not None:
        label = f"#{track} {label}"
    if score is not None:
        label += f" {score:.2f}"
    # White text on a black band above the box: readable on any background.
    scale = 0.4 * thickness
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x0 = max(round(x), 0)
    y0 = max(round(y) - th - base - 2 * thickness, 0)
    cv2.rectangle(image, (x0, y0), (x0 + tw + 4, y0 + th + base + 4), (0, 0, 0), cv2.FILLED)
    cv2.putText(
        image,
        label,
        (x0 + 2, y0 + th + 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        _WHITE,
        thickness,
        cv2.LINE_AA,
    )

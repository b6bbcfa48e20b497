"""FSA-Net's "type1" crop box: a face's landmark box widened by 0.6 of its size on each side.

The AFLW2000 test crops (FSA-Net's `data/type1/TYY_create_db_type1.py`) and the crops of
detected faces share this one rule, so the engines see faces framed as they were trained on.
"""

from __future__ import annotations

MARGIN = 0.6  # FSA-Net's type1 recipe and its demos both widen by 0.6 on each side

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def crop_box(
    box: Box, width: int, height: int, margin: float = MARGIN
) -> tuple[int, int, int, int]:
    """Widen `box` by `margin` of its size on each side and clip, rounding as FSA-Net does."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return (
        max(int(x0 - margin * w), 0),
        max(int(y0 - margin * h), 0),
        min(int(x1 + margin * w), width - 1),
        min(int(y1 + margin * h), height - 1),
    )

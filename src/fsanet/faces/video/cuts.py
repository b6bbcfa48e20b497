"""Scene cuts: a frame unlike the one before it, so faces are detected again, not carried,
and tracks end (a face in the same place across a cut is someone else, or another shot).

The rule: the mean absolute difference of the two frames' 64 x 36 grey thumbnails, in grey
levels (0-255), above `threshold`. Measured on the clips in ../shared/videos: the three
cuts of stage-cuts.mp4 (checked by eye: frames 20, 82, 211) differ by 27.7-30.4; its zooms
and pans by at most 13.6; classroom.mp4, talking-head.mp4 and the GIFs by at most 5.5.
"""

from __future__ import annotations

import cv2
import numpy as np

from fsanet.faces.options import CUT_THRESHOLD

THUMBNAIL = (64, 36)  # width, height: enough for a shot's layout, cheap (~0.2 ms at 720p)


class SceneCuts:
    """`is_cut(image)` per frame, in order: whether it starts a new scene."""

    def __init__(self, threshold: float = CUT_THRESHOLD) -> None:
        if threshold <= 0:
            raise ValueError(f"the scene-cut threshold must be positive, got {threshold}")
        self.threshold = threshold
        self._last: np.ndarray | None = None

    def difference(self, image: np.ndarray) -> float:
        """Mean |difference| with the previous frame's thumbnail (0 for the first frame)."""
        small = cv2.resize(image, THUMBNAIL, interpolation=cv2.INTER_AREA)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        grey = small.astype(np.float32)
        last, self._last = self._last, grey
        return 0.0 if last is None else float(np.abs(grey - last).mean())

    def is_cut(self, image: np.ndarray) -> bool:
        return self.difference(image) > self.threshold

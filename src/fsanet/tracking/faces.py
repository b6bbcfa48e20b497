"""Track ids, and optionally smoothed angles, for the faces of consecutive video frames."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fsanet.tracking.one_euro import OneEuro, OneEuroFilter
from fsanet.tracking.tracker import IouTracker

if TYPE_CHECKING:
    from fsanet.predict import Face


class FaceTracks:
    """`update(faces, time)` per frame: the faces with their `track` id set.

    With `smooth` (One Euro parameters), each track's yaw, pitch and roll are filtered and
    the engine's own values are kept in `Face.raw`. A track's filter ends with the track,
    so a face that comes back under a new id starts from its raw angles.
    """

    def __init__(self, smooth: OneEuro | None = None, tracker: IouTracker | None = None) -> None:
        self.smooth = smooth
        self.tracker = tracker or IouTracker()
        self._filters: dict[int, OneEuroFilter] = {}

    def update(self, faces: list[Face], time: float) -> list[Face]:
        ids = self.tracker.update([f.box for f in faces])
        out = [replace(face, track=track) for face, track in zip(faces, ids, strict=True)]
        if self.smooth is not None:
            out = [self._smoothed(face, time) for face in out]
            alive = self.tracker.ids
            self._filters = {k: v for k, v in self._filters.items() if k in alive}
        return out

    def _smoothed(self, face: Face, time: float) -> Face:
        assert face.track is not None and self.smooth is not None
        filt = self._filters.setdefault(face.track, OneEuroFilter(self.smooth))
        raw = (face.yaw, face.pitch, face.roll)
        yaw, pitch, roll = (float(v) for v in filt(time, raw))
        return replace(face, yaw=yaw, pitch=pitch, roll=roll, raw=raw)

"""Track ids, and optionally smoothed angles, for the faces of consecutive video frames."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fsanet.faces.face import Face
from fsanet.faces.tracking.one_euro import OneEuro, OneEuroFilter
from fsanet.faces.tracking.tracker import IouTracker
from fsanet.faces.vision.detect import Detection


class FaceTracks:
    """`update(faces, time)` per frame: the faces with their `track` id set.

    With `smooth` (One Euro parameters), each track's yaw, pitch and roll are filtered and
    the engine's own values are kept in `Face.raw`. A track's filter ends with the track,
    so a face that comes back under a new id starts from its raw angles.

    Between detections, `carried()` gives each live track's predicted box as a detection
    (score and landmarks of its last sighting, the landmarks moved with the box) and
    `follow(faces, time)` takes the faces posed from them.
    """

    def __init__(self, smooth: OneEuro | None = None, tracker: IouTracker | None = None) -> None:
        self.smooth = smooth
        self.tracker = tracker or IouTracker()
        self._filters: dict[int, OneEuroFilter] = {}
        self._seen: dict[int, Detection] = {}  # each track's last detection

    def cut(self) -> None:
        """A new scene: every track (and its filter) ends; faces after it get new ids."""
        self.tracker.end_all()
        self._seen, self._filters = {}, {}

    def update(self, faces: list[Face], time: float) -> list[Face]:
        ids = self.tracker.update([f.box for f in faces])
        out = [replace(face, track=track) for face, track in zip(faces, ids, strict=True)]
        alive = self.tracker.ids
        self._seen = {k: v for k, v in self._seen.items() if k in alive}
        for face in out:
            assert face.track is not None
            marks = None if face.landmarks is None else np.asarray(face.landmarks, np.float64)
            self._seen[face.track] = Detection(face.box, face.score, marks)
        return self.follow(out, time)

    def carried(self) -> list[tuple[int, Detection]]:
        """(track id, detection) for a frame without detection: see the class doc."""
        out = []
        for track, box in self.tracker.carry():
            last = self._seen[track]
            marks = last.landmarks
            if marks is not None:  # the same place in the box: scaled and shifted with it
                x, y, w, h = last.box
                scale = np.array([box[2] / max(w, 1e-9), box[3] / max(h, 1e-9)])
                marks = (marks - (x, y)) * scale + box[:2]
            out.append((track, Detection(box, last.score, marks)))
        return out

    def follow(self, faces: list[Face], time: float) -> list[Face]:
        """Faces that already carry their track id: smoothed when on."""
        if self.smooth is None:
            return faces
        out = [self._smoothed(face, time) for face in faces]
        alive = self.tracker.ids
        self._filters = {k: v for k, v in self._filters.items() if k in alive}
        return out

    def _smoothed(self, face: Face, time: float) -> Face:
        assert face.track is not None and self.smooth is not None
        filt = self._filters.setdefault(face.track, OneEuroFilter(self.smooth))
        raw = (face.yaw, face.pitch, face.roll)
        yaw, pitch, roll = (float(v) for v in filt(time, raw))
        return replace(face, yaw=yaw, pitch=pitch, roll=roll, raw=raw)

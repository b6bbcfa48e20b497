"""Faces followed across video frames: a small IoU + motion tracker.

Why not a library: `supervision` 0.31 removed its ByteTrack (now in roboflow's `trackers`,
which pulls in supervision, PyAV and the non-headless `opencv-python` that clashes with our
`opencv-python-headless`), and `norfair` pins numpy < 2. Faces from one detector with a
score threshold are the easy case of multi-object tracking, so the rule below is enough:

1. Each track predicts its box with a constant velocity (box change per frame, smoothed),
   extrapolated at most `max_extrapolate` frames so a lost track does not drift away.
2. Detections are assigned to predicted boxes by the Hungarian algorithm on IoU; pairs
   under `iou_min` are refused.
3. What is left is assigned on centre distance (in box sizes, at most `max_distance`,
   boxes within `max_size_ratio` in area): a fast move or a low frame rate leaves no
   overlap, but the face is still the nearest one of its size.
4. A detection left over starts a new track (every face gets an id at once); a track not
   seen for more than `max_age` frames ends. Ids count up from 1 and are never reused.

Between detections (`--detect-every K`), `carry()` moves every track seen at the last
detection on by its velocity, one frame at a time; the next `update` compares the
detections with those carried boxes and measures the velocity over the whole gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from fsanet.faces.tracking.boxes import centre_distance, iou_matrix, size_ratio


@dataclass
class _Track:
    id: int
    box: np.ndarray  # x, y, w, h where it was last seen
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # per frame
    misses: int = 0  # detection frames since it was last seen
    hits: int = 1
    carried: int = 0  # frames carried by carry() since it was last seen


class IouTracker:
    """`update(boxes)` once per frame gives each box its track id (see the module doc)."""

    def __init__(
        self,
        *,
        iou_min: float = 0.3,
        max_distance: float = 0.6,
        max_size_ratio: float = 2.0,
        max_age: int = 15,
        max_extrapolate: int = 3,
        velocity_weight: float = 0.5,
    ) -> None:
        if max_age < 0 or not 0.0 <= iou_min <= 1.0 or not 0.0 < velocity_weight <= 1.0:
            raise ValueError("tracker parameters out of range")
        self.iou_min, self.max_distance, self.max_size_ratio = iou_min, max_distance, max_size_ratio
        self.max_age, self.max_extrapolate = max_age, max_extrapolate
        self.velocity_weight = velocity_weight
        self._tracks: list[_Track] = []
        self._next_id = 1

    @property
    def ids(self) -> set[int]:
        """Ids of the tracks alive now (seen in the last `max_age` frames)."""
        return {t.id for t in self._tracks}

    @property
    def created(self) -> int:
        """How many tracks have been started so far."""
        return self._next_id - 1

    def end_all(self) -> None:
        """A new scene (a cut): every track ends, the next boxes start new ids."""
        self._tracks = []

    def update(self, boxes: Sequence[Sequence[float]]) -> list[int]:
        """The track id of each box of this frame, in the boxes' order."""
        dets = np.asarray(boxes, np.float64).reshape(-1, 4)
        ids: list[int | None] = [None] * len(dets)
        free_tracks = list(range(len(self._tracks)))
        free_dets = list(range(len(dets)))
        if self._tracks and len(dets):
            predicted = np.stack([self._predict(t) for t in self._tracks])
            pairs = self._assign(predicted, dets, free_tracks, free_dets, self._by_iou)
            pairs += self._assign(predicted, dets, free_tracks, free_dets, self._by_distance)
            for ti, di in pairs:
                self._follow(self._tracks[ti], dets[di])
                ids[di] = self._tracks[ti].id
        for ti in free_tracks:
            self._tracks[ti].misses += 1
        self._tracks = [t for t in self._tracks if t.misses <= self.max_age]
        for di in free_dets:
            self._tracks.append(_Track(self._next_id, dets[di].copy()))
            ids[di] = self._next_id
            self._next_id += 1
        return [i for i in ids if i is not None]

    def carry(self) -> list[tuple[int, tuple[float, float, float, float]]]:
        """A frame without detection: (id, predicted box) of every track seen at the last
        detection, moved on one frame by its velocity. Lost tracks are not carried."""
        out = []
        for track in self._tracks:
            if track.misses == 0:
                track.carried += 1
                box = self._at(track, track.carried)
                out.append((track.id, (float(box[0]), float(box[1]), float(box[2]), float(box[3]))))
        return out

    def _predict(self, track: _Track) -> np.ndarray:
        # Carried frames follow the motion model in full; only misses are capped.
        return self._at(track, track.carried + min(track.misses + 1, self.max_extrapolate))

    @staticmethod
    def _at(track: _Track, steps: int) -> np.ndarray:
        box = track.box + track.velocity * steps
        box[2:] = np.maximum(box[2:], 1.0)
        return box

    def _follow(self, track: _Track, box: np.ndarray) -> None:
        step = (box - track.box) / (track.misses + track.carried + 1)
        w = self.velocity_weight if track.hits > 1 else 1.0
        track.velocity = w * step + (1.0 - w) * track.velocity
        track.box, track.misses, track.hits, track.carried = box.copy(), 0, track.hits + 1, 0

    def _by_iou(self, tracks: np.ndarray, dets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        iou = iou_matrix(tracks, dets)
        return -iou, iou >= max(self.iou_min, 1e-9)

    def _by_distance(self, tracks: np.ndarray, dets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist = centre_distance(tracks, dets)
        ok = (dist <= self.max_distance) & (size_ratio(tracks, dets) <= self.max_size_ratio)
        return dist, ok

    @staticmethod
    def _assign(predicted, dets, free_tracks, free_dets, rule) -> list[tuple[int, int]]:
        """Hungarian assignment of the free tracks to the free detections under `rule`
        (cost, allowed); the pairs made are taken out of both free lists."""
        if not free_tracks or not free_dets:
            return []
        cost, ok = rule(predicted[free_tracks], dets[free_dets])
        cost = np.where(ok, cost, 1e6)  # a refused pair is never worth taking
        rows, cols = linear_sum_assignment(cost)
        pairs = [
            (free_tracks[r], free_dets[c]) for r, c in zip(rows, cols, strict=True) if ok[r, c]
        ]
        for ti, di in pairs:
            free_tracks.remove(ti)
            free_dets.remove(di)
        return pairs

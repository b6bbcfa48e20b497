"""The IoU + motion tracker, the One Euro filter and FaceTracks, on synthetic boxes."""

from __future__ import annotations

import numpy as np
import pytest

from fsanet.core.errors import FsanetError
from fsanet.faces.face import Face
from fsanet.faces.tracking import FaceTracks, IouTracker, OneEuro, OneEuroFilter
from fsanet.faces.tracking.boxes import iou_matrix


def test_iou_of_boxes() -> None:
    iou = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]])
    assert np.allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_moving_faces_keep_their_ids_whatever_the_detection_order() -> None:
    tracker = IouTracker()
    rng = np.random.default_rng(0)
    seen: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for t in range(60):
        boxes = [
            (10 + 4 * t, 50, 40, 40),  # moving right
            (400 - 3 * t, 60, 50, 50),  # moving left, passing above/below the first
            (200, 300 + 2 * t, 60, 60),  # moving down
        ]
        order = rng.permutation(3)
        ids = tracker.update([boxes[i] for i in order])
        for i, track in zip(order, ids, strict=True):
            seen[int(i)].add(track)
    assert [len(v) for v in seen.values()] == [1, 1, 1]
    assert tracker.created == 3


def test_a_fast_face_without_overlap_is_followed_by_distance() -> None:
    tracker = IouTracker()
    # 22 px on a 40 px box from a standing start: IoU 0.29, under the IoU rule's 0.3
    assert iou_matrix([[0, 100, 40, 40]], [[22, 100, 40, 40]])[0, 0] < tracker.iou_min
    ids = {tracker.update([(22 * t, 100, 40, 40)])[0] for t in range(20)}
    assert ids == {1}
    # ... and then a stop: the prediction overshoots by half a box, the distance rule holds on
    assert tracker.update([(22 * 19, 100, 40, 40)]) == [1]


def test_a_face_hidden_for_a_while_comes_back_under_its_id_but_not_after_max_age() -> None:
    tracker = IouTracker(max_age=5)
    box = (100, 100, 50, 50)
    assert tracker.update([box]) == [1]
    for _ in range(5):
        assert tracker.update([]) == []
    assert tracker.update([box]) == [1]  # missed 5 frames: still the same face
    for _ in range(6):
        tracker.update([])
    assert tracker.ids == set()
    assert tracker.update([box]) == [2]  # gone too long: a new track, ids never reused


def test_a_new_face_far_away_gets_a_new_id_and_two_faces_never_share_one() -> None:
    tracker = IouTracker()
    assert tracker.update([(0, 0, 40, 40)]) == [1]
    assert tracker.update([(0, 0, 40, 40), (300, 300, 40, 40)]) == [1, 2]
    ids = tracker.update([(2, 0, 40, 40), (4, 0, 40, 40)])  # two boxes over one track
    assert sorted(ids) == [1, 3]


def test_bad_tracker_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        IouTracker(iou_min=1.5)


def test_one_euro_cuts_jitter_on_a_still_value_and_follows_a_step() -> None:
    rng = np.random.default_rng(1)
    filt = OneEuroFilter(OneEuro())
    noisy = 10.0 + rng.normal(0, 1.0, size=(300, 3))
    out = np.array([filt(i / 30, v) for i, v in enumerate(noisy)])
    raw_jitter = np.abs(np.diff(noisy[100:], axis=0)).mean()
    jitter = np.abs(np.diff(out[100:], axis=0)).mean()
    assert raw_jitter > 3 * jitter
    assert np.abs(out[100:].mean(0) - 10.0).max() < 0.3
    for i in range(300, 360):  # a 30 degree step: followed within a second
        last = filt(i / 30, [40.0, 40.0, 40.0])
    assert np.abs(last - 40.0).max() < 1.0


def test_one_euro_same_time_and_bad_parameters() -> None:
    filt = OneEuroFilter()
    assert filt(0.0, [1.0]).tolist() == [1.0]
    assert filt(0.0, [50.0]).tolist() == [1.0]  # no time passed: nothing new
    with pytest.raises(FsanetError, match="One Euro parameters must be positive"):
        OneEuro(min_cutoff=0.0)
    assert OneEuro().to_dict() == {"min_cutoff": 0.5, "beta": 0.02, "d_cutoff": 1.0}


def _face(x: float, yaw: float) -> Face:
    return Face((x, 10.0, 40.0, 40.0), 0.9, yaw, 0.0, 0.0)


def test_face_tracks_set_ids_and_keep_raw_angles_when_smoothing() -> None:
    plain = FaceTracks()
    faces = plain.update([_face(0, 5.0), _face(200, -5.0)], 0.0)
    assert [f.track for f in faces] == [1, 2] and all(f.raw is None for f in faces)
    smooth = FaceTracks(OneEuro())
    yaws = [0.0, 3.0, -3.0, 3.0]
    for i, yaw in enumerate(yaws):
        (face,) = smooth.update([_face(i, yaw)], i / 30)
    assert face.raw == (3.0, 0.0, 0.0) and abs(face.yaw) < 2.0 and face.track == 1
    assert face.to_dict()["raw"] == {"yaw": 3.0, "pitch": 0.0, "roll": 0.0}
    for i in range(20):  # the track ends: its filter goes with it
        smooth.update([], 1 + i / 30)
    assert smooth._filters == {}


def test_carried_boxes_follow_the_motion_and_the_next_detection_keeps_the_id() -> None:
    tracker = IouTracker()
    for t in range(3):  # learns 10 px per frame to the right
        assert tracker.update([(100 + 10 * t, 50, 40, 40)]) == [1]
    carried = [tracker.carry() for _ in range(4)]  # frames 3-6 without detection
    assert [c[0][0] for c in carried] == [1, 1, 1, 1]
    assert [round(c[0][1][0]) for c in carried] == [130, 140, 150, 160]
    # The detection of frame 7 matches the carried box and the speed is kept per frame.
    assert tracker.update([(170, 50, 40, 40)]) == [1]
    assert round(tracker.carry()[0][1][0]) == 180
    # A track missed at a detection is lost: not carried.
    assert tracker.update([]) == [] and tracker.carry() == []


def test_face_tracks_carry_landmarks_with_the_box() -> None:
    tracks = FaceTracks()
    marks = ((110.0, 60.0), (130.0, 60.0), (120.0, 70.0), (112.0, 80.0), (128.0, 80.0))
    for t in range(2):
        moved = tuple((x + 10 * t, y) for x, y in marks)
        tracks.update([Face((100 + 10 * t, 50, 40, 40), 0.9, 1, 2, 3, moved)], t / 10)
    ((track, detection),) = tracks.carried()
    assert track == 1 and detection.score == 0.9
    assert detection.box == (120, 50, 40, 40)
    assert detection.landmarks is not None
    assert np.allclose(detection.landmarks, np.add(marks, (20, 0)))

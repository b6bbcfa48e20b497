"""Head pose in the wild: the estimator API, `fsanet predict` on files, folders and video."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from fsanet.artifact import Artifact
from fsanet.cli import main
from fsanet.datasets.aflw2000 import pose_from_mat
from fsanet.engine import PoseEngine
from fsanet.errors import FsanetError
from fsanet.predict import Face, HeadPoseEstimator, annotate, predict

pytestmark = pytest.mark.real

CLEAR = (2, 13, 43, 63)  # well-lit, near-frontal AFLW2000 photos


def photo(shared: Path, number: int) -> tuple[np.ndarray, np.ndarray]:
    """One AFLW2000 photo (BGR) and its [yaw, pitch, roll] label in degrees."""
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        jpg = z.read(f"AFLW2000/image{number:05d}.jpg")
        mat = scipy.io.loadmat(io.BytesIO(z.read(f"AFLW2000/image{number:05d}.mat")))
    return cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), pose_from_mat(mat, "")


@pytest.fixture(scope="module")
def estimator(fusion_engine: PoseEngine) -> Iterator[HeadPoseEstimator]:
    # The session's engine is shared: do not close it with the estimator.
    yield HeadPoseEstimator(fusion_engine)


@pytest.fixture(scope="module")
def photos(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder: clear photos, one in a subfolder, and a broken 'jpg'."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for n in CLEAR[:2]:
        cv2.imwrite(str(folder / f"image{n:05d}.jpg"), photo(shared, n)[0])
    cv2.imwrite(str(folder / "sub" / "face.png"), photo(shared, CLEAR[2])[0])
    (folder / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder


@pytest.mark.parametrize("number", CLEAR)
def test_angles_are_near_the_labels_for_clear_photos(
    estimator: HeadPoseEstimator, shared: Path, number: int
) -> None:
    image, label = photo(shared, number)
    faces = estimator(image)
    assert len(faces) == 1 and faces[0].score > 0.8
    error = np.abs(np.array([faces[0].yaw, faces[0].pitch, faces[0].roll]) - label)
    assert error.max() < 12 and error.mean() < 7, (error, label)


def test_an_image_without_a_face_gives_an_empty_list(estimator: HeadPoseEstimator) -> None:
    assert estimator(np.full((240, 320, 3), 90, np.uint8)) == []


def test_all_faces_of_an_image_go_through_the_engine_in_one_batch(
    estimator: HeadPoseEstimator, shared: Path
) -> None:
    calls: list[int] = []
    engine = estimator.engine

    class Counting:
        def __call__(self, crops: np.ndarray) -> np.ndarray:
            calls.append(len(crops))
            return engine(crops)

    two = np.hstack([photo(shared, CLEAR[0])[0], photo(shared, CLEAR[3])[0]])
    faces = HeadPoseEstimator(Counting(), estimator.detector)(two)  # type: ignore[arg-type]
    assert len(faces) == 2 and calls == [2]


def test_face_result_has_a_short_str_and_a_dict() -> None:
    face = Face((10.04, 20.0, 30.0, 40.0), 0.91234, 12.345, -6.78, 0.5, ((1.0, 2.0),) * 5)
    assert str(face) == "Face(box=(10, 20, 30, 40), score=0.91, yaw=12.3, pitch=-6.8, roll=0.5)"
    data = face.to_dict()
    assert data["box"] == [10.0, 20.0, 30.0, 40.0] and data["yaw"] == 12.35
    assert data["score"] == 0.9123 and len(data["landmarks"]) == 5
    json.dumps(data)


def test_unknown_crop_rule_is_rejected(estimator: HeadPoseEstimator) -> None:
    with pytest.raises(FsanetError, match="unknown crop rule"):
        HeadPoseEstimator(estimator.engine, estimator.detector, crop="wide")


def test_predict_a_folder_skips_the_unreadable_file(
    estimator: HeadPoseEstimator, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = io.StringIO()
    summary = predict([str(photos)], estimator, output_dir=tmp_path / "out", jsonl=out)
    err = capsys.readouterr().err
    assert "skipping" in err and "broken.jpg: not an image OpenCV can decode" in err
    assert summary.sources == 4 and summary.images == 3 and summary.faces == 3
    assert len(summary.failed) == 1
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [Path(r["source"]).name for r in records] == [
        "image00002.jpg",
        "image00013.jpg",
        "face.png",
    ]
    assert all(r["frame"] is None and len(r["box"]) == 4 for r in records)
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in summary.outputs_paths())
    assert written == ["image00002.jpg", "image00013.jpg", "sub/face.png"]
    assert not list((tmp_path / "out").rglob("*.tmp"))  # atomic writes leave nothing behind


def test_cli_nonexistent_path_is_one_line_and_exit_1(
    fusion_artifact: Artifact, capsys: pytest.CaptureFixture
) -> None:
    assert main(["predict", "/no/such/photo.jpg", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "fsanet: error: /no/such/photo.jpg does not exist: give image or video "
        "files, folders, or a camera index"
    ]


def test_cli_nothing_readable_exits_1(
    fusion_artifact: Artifact, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    assert main(["predict", str(bad), "-q"]) == 1
    assert "no input could be read" in capsys.readouterr().err


def test_video_round_trip(estimator: HeadPoseEstimator, shared: Path, tmp_path: Path) -> None:
    stills = [photo(shared, n)[0] for n in CLEAR[:3]]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (450, 450))
    for still in stills:
        for _ in range(2):
            writer.write(still)
    writer.release()

    out = io.StringIO()
    summary = predict([str(video)], estimator, output_dir=tmp_path / "out", jsonl=out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert summary.frames == 6 and summary.faces == 6 and not summary.failed
    assert [r["frame"] for r in records] == list(range(6))
    for record, still in zip(records, [s for s in stills for _ in range(2)], strict=True):
        face = estimator(still)[0]
        assert abs(record["yaw"] - face.yaw) < 3 and abs(record["pitch"] - face.pitch) < 3
    annotated = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    annotated.release()


def test_annotate_draws_on_a_copy(estimator: HeadPoseEstimator, shared: Path) -> None:
    image = photo(shared, CLEAR[0])[0]
    before = image.copy()
    drawn = annotate(image, estimator(image))
    assert (image == before).all() and (drawn != before).any()


def test_cli_predict_does_not_import_tensorflow(
    fusion_artifact: Artifact, photos: Path, tmp_path: Path
) -> None:
    argv = ["predict", str(photos), "-q", "--jsonl", str(tmp_path / "p.jsonl")]
    script = (
        "import sys\n"
        "from fsanet.cli import main\n"
        f"code = main({argv!r})\n"
        "assert code == 0, code\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow'], 'tensorflow'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3
    assert "broken.jpg" in done.stderr

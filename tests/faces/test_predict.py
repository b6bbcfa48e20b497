"""Head pose in the wild: the estimator API, `fsanet predict` on files, folders and video."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from fsanet.assets.aflw2000 import pose_from_mat
from fsanet.cli import main
from fsanet.core.errors import FsanetError
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator, annotate
from fsanet.faces.face import Face, Faces
from fsanet.faces.predict import predict
from fsanet.faces.tracking import OneEuro
from fsanet.faces.vision.detect import Detection
from fsanet.faces.vision.rotation import angles_from_matrix

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


class _Many:
    """A detector that finds `n` faces (best score first) on any image."""

    def __init__(self, n: int) -> None:
        self.n = n

    def detect(self, image: np.ndarray) -> list[Detection]:
        return [Detection((10.0 + 3 * i, 10.0, 40.0, 40.0), 0.99 - i / 1000) for i in range(self.n)]


def test_faces_over_max_faces_are_cut_and_say_so(
    estimator: HeadPoseEstimator, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    many = HeadPoseEstimator(estimator.engine, _Many(5), max_faces=2)  # type: ignore[arg-type]
    image = np.full((120, 160, 3), 90, np.uint8)
    faces = many(image)
    assert isinstance(faces, Faces) and len(faces) == 2
    assert faces.total == 5 and faces.truncated and [f.score for f in faces] == [0.99, 0.989]
    cv2.imwrite(str(tmp_path / "crowd.png"), image)
    summary = predict([str(tmp_path / "crowd.png")], many)
    assert summary.faces == 2 and summary.truncated == [f"{tmp_path}/crowd.png: kept 2 of 5 faces"]
    assert summary.to_dict()["truncated"] == summary.truncated
    assert "crowd.png has 5 faces: kept the 2 best (--max-faces)" in capsys.readouterr().err
    assert not HeadPoseEstimator(estimator.engine, _Many(2))(image).truncated  # type: ignore[arg-type]


def test_a_folder_without_images_is_an_error(estimator: HeadPoseEstimator, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FsanetError, match=f"no images or videos in {tmp_path}"):
        predict([str(tmp_path)], estimator)


def test_an_image_over_max_pixels_is_refused_from_its_header(
    estimator: HeadPoseEstimator,
    shared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    # A PNG header that declares 20000 x 20000 pixels: refused without decoding it.
    bomb = tmp_path / "bomb.png"
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + b"\0" * 64)
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo(shared, CLEAR[0])[0])
    decoded: list[int] = []
    real_decode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real_decode(*a))
    summary = predict([str(bomb), str(tmp_path / "photo.jpg")], estimator)
    assert summary.images == 1 and len(decoded) == 1  # only the photo was decoded
    assert "bomb.png: 20000x20000 = 400000000 pixels is over the limit of 40000000" in (
        capsys.readouterr().err
    )
    with pytest.raises(FsanetError, match="no input could be read"):
        predict([str(tmp_path / "photo.jpg")], estimator, max_pixels=450 * 450 - 1)


def test_cli_predict_max_pixels_and_no_images_are_one_line(
    fusion_artifact: Artifact, shared: Path, tmp_path: Path, run_cli
) -> None:
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo(shared, CLEAR[0])[0])
    result = run_cli("predict", str(tmp_path / "photo.jpg"), "-q", "--max-pixels", "1000")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("fsanet:")]
    assert lines == [
        f"fsanet: warning: skipping {tmp_path}/photo.jpg: 450x450 = 202500 pixels is over the "
        "limit of 1000 (--max-pixels)",
        "fsanet: error: no input could be read (1 tried)",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("predict", str(empty), "-q")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2] == f"fsanet: error: no images or videos in {empty}"


def _clip(shared: Path, path: Path, frames: int) -> Path:
    still = photo(shared, CLEAR[0])[0]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (450, 450))
    for _ in range(frames):
        writer.write(still)
    writer.release()
    return path


def test_a_video_that_ends_early_is_reported(
    estimator: HeadPoseEstimator, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    video = _clip(shared, tmp_path / "cut.avi", 8)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # the header still declares 8 frames
    summary = predict([str(video)], estimator)
    assert 0 < summary.frames < 8
    assert summary.incomplete == [f"{video}: ended at frame {summary.frames} of 8"]
    assert f"ended after {summary.frames} of its 8 frames" in capsys.readouterr().err
    whole = predict([str(_clip(shared, tmp_path / "whole.avi", 3))], estimator, max_frames=2)
    assert whole.frames == 2 and whole.incomplete == []  # --frames is no early end


def test_same_names_in_two_folders_get_two_outputs(
    estimator: HeadPoseEstimator, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "face.jpg"), photo(shared, CLEAR[0])[0])
    video = _clip(shared, tmp_path / "a" / "face.avi", 2)
    paths = [str(tmp_path / "a" / "face.jpg"), str(tmp_path / "b"), str(video)]
    summary = predict(paths, estimator, output_dir=tmp_path / "out")
    assert sorted(Path(p).name for p in summary.outputs) == ["face-2.jpg", "face.jpg", "face.mp4"]
    assert f"{video} is written as {tmp_path / 'out' / 'face.mp4'}" in capsys.readouterr().err


def test_a_video_output_that_cannot_be_written_names_the_path(
    estimator: HeadPoseEstimator, shared: Path, tmp_path: Path
) -> None:
    video = _clip(shared, tmp_path / "clip.avi", 2)
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    with pytest.raises(FsanetError, match=f"cannot write {blocker}/clip.mp4: ") as e:
        predict([str(video)], estimator, output_dir=blocker)
    assert "mp4v" not in str(e.value)


def _records(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_video_records_carry_track_time_rotation_and_smoothing(
    estimator: HeadPoseEstimator, shared: Path, tmp_path: Path
) -> None:
    video = _clip(shared, tmp_path / "still.avi", 4)  # 10 frames/s
    plain, smooth = io.StringIO(), io.StringIO()
    predict([str(video)], estimator, jsonl=plain, rotation=True)
    predict([str(video)], estimator, jsonl=smooth, smooth=OneEuro())
    raw, smoothed = _records(plain), _records(smooth)
    assert [r["time"] for r in raw] == [0.0, 0.1, 0.2, 0.3]
    assert [r["track"] for r in raw] == [1, 1, 1, 1]
    for record in raw:
        matrix = np.array(record["rotation"])
        assert np.linalg.det(matrix) == pytest.approx(1.0, abs=1e-5)
        angles = angles_from_matrix(matrix)
        assert np.allclose(angles, [record["yaw"], record["pitch"], record["roll"]], atol=0.01)
        assert "raw" not in record  # off by default: the engine's values, nothing else
    # With --smooth the engine's values are kept unchanged under "raw".
    assert [r["raw"] for r in smoothed] == [
        {k: r[k] for k in ("yaw", "pitch", "roll")} for r in raw
    ]
    assert all("rotation" not in r for r in smoothed)


def test_cli_predict_rotation_and_smooth(
    fusion_artifact: Artifact, shared: Path, tmp_path: Path
) -> None:
    video = _clip(shared, tmp_path / "clip.avi", 3)
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo(shared, CLEAR[0])[0])
    jsonl = tmp_path / "out.jsonl"
    argv = ["predict", str(video), str(tmp_path / "photo.jpg"), "-q", "--jsonl", str(jsonl)]
    assert main([*argv, "--rotation", "--smooth", "--smooth-min-cutoff", "0.2"]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    image, frames = records[0], records[1:]
    assert image["frame"] is None and image["track"] is None and image["time"] is None
    assert len(image["rotation"]) == 3 and "raw" not in image  # no smoothing on a photo
    assert len(frames) == 3 and all("raw" in r and len(r["rotation"]) == 3 for r in frames)
    with pytest.raises(SystemExit):  # argparse refuses a negative beta
        main([*argv, "--smooth", "--smooth-beta", "-1"])


def test_cli_predict_detect_every_and_detect_size(
    fusion_artifact: Artifact, shared: Path, tmp_path: Path
) -> None:
    video = _clip(shared, tmp_path / "clip.avi", 5)
    jsonl = tmp_path / "out.jsonl"
    argv = ["predict", str(video), "-q", "--jsonl", str(jsonl)]
    assert main([*argv, "--detect-every", "2", "--detect-size", "200"]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    # Frames 1 and 3 are carried: the same face, its track, its last score.
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4]
    assert {r["track"] for r in records} == {1}
    assert records[1]["score"] == records[0]["score"] and records[1]["box"] == records[0]["box"]
    with pytest.raises(SystemExit):  # argparse refuses a detector input under 64 pixels
        main([*argv, "--detect-size", "32"])


@pytest.mark.real
def test_a_pipelined_file_is_decoded_on_one_thread(shared: Path) -> None:
    import cv2

    from fsanet.faces.predict import _open_video
    from fsanet.faces.sources import Source

    for clip in ("classroom.mp4", "turns-female.gif"):
        source = Source("video", str(shared / "videos" / clip), clip)
        capture = _open_video(source, single_thread=True)
        assert capture.isOpened() and capture.get(cv2.CAP_PROP_N_THREADS) == 1, clip
        assert capture.read()[0]
        capture.release()

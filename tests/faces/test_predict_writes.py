"""What `fsanet predict` writes: never over an input, whole or not at all (a full disk is one
line), no debris after a killed run, and no input it cannot name an output for or must not
read (a FIFO, a device) stops the run or hangs it. Destructive cases run on copies in
tmp_path."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from fsanet.cli import main
from fsanet.core.errors import FsanetError
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.predict import predict
from fsanet.faces.sources import camera_index

pytestmark = pytest.mark.real

PHOTOS = (2, 13)  # AFLW2000 photos with one clear face each
Run = Callable[..., subprocess.CompletedProcess]


def _jpeg(shared: Path, number: int) -> bytes:
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        return z.read(f"AFLW2000/image{number:05d}.jpg")


@pytest.fixture
def photos(shared: Path, tmp_path: Path) -> Path:
    """A folder of the user's photos (copies: the destructive cases run on these)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in PHOTOS:
        (folder / f"image{n:05d}.jpg").write_bytes(_jpeg(shared, n))
    return folder


@pytest.fixture(scope="module")
def estimator(fusion_engine: PoseEngine) -> Iterator[HeadPoseEstimator]:
    yield HeadPoseEstimator(fusion_engine)  # the session's engine: not closed here


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one `fsanet: error:` line of a run that exits 1 without a traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsanet: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _clip(shared: Path, path: Path, frames: int) -> Path:
    still = cv2.imdecode(np.frombuffer(_jpeg(shared, PHOTOS[0]), np.uint8), cv2.IMREAD_COLOR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (450, 450))
    for _ in range(frames):
        writer.write(still)
    writer.release()
    return path


# --- no output over an input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["output is the input folder", "jsonl is the input", "jsonl is a hard link",
             "jsonl is a symlink", "earlier outputs are inputs", "a video lands on an input",
             "two outputs at one path"],
)  # fmt: skip
def test_an_output_that_would_replace_an_input_is_refused_before_the_engine(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    a = photos / "image00002.jpg"
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.avi").write_bytes(b"never read")
    (videos / "clip.mp4").write_bytes(b"never read")  # clip.avi's annotated copy's name
    (tmp_path / "hard.jpg").hardlink_to(a)
    (tmp_path / "link.jpg").symlink_to(a)
    (photos / "out").mkdir()
    (photos / "out" / "image00002.jpg").write_bytes(b"an earlier run's annotated copy")
    out = tmp_path / "out"
    argv, message = {
        "output is the input folder": (["--output", photos, photos], f"{a}: it is an input"),
        "jsonl is the input": (["--jsonl", a, a], f"{a}: it is an input"),
        "jsonl is a hard link": (
            ["--jsonl", tmp_path / "hard.jpg", photos],
            f"{tmp_path}/hard.jpg: it is the input {a}",
        ),
        "jsonl is a symlink": (
            ["--jsonl", tmp_path / "link.jpg", a],
            f"{tmp_path}/link.jpg: it is the input {a}",
        ),
        "earlier outputs are inputs": (
            ["--output", photos / "out", photos],
            f"{photos}/out/image00002.jpg: it is an input",
        ),
        "a video lands on an input": (
            ["--output", videos, videos],
            f"{videos}/clip.mp4: it is an input",
        ),
        "two outputs at one path": (
            ["--output", out, "--jsonl", out / "image00002.jpg", a],
            f"{out}/image00002.jpg: {out}/image00002.jpg is written there too",
        ),
    }[case]
    if "input" in message:
        message += ", which would be lost; write the outputs elsewhere"
    before = _contents(tmp_path)
    # An engine that does not exist: the refusal comes first, before any loading.
    assert main(["predict", "-q", "--engine", "/no/such/engine", *map(str, argv)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fsanet: error: cannot write {message}"
    ]
    assert _contents(tmp_path) == before  # every input as it was, nothing written


def test_predict_into_its_input_folder_refuses_or_writes_beside(
    estimator: HeadPoseEstimator, photos: Path, shared: Path, tmp_path: Path
) -> None:
    before = _contents(photos)
    with pytest.raises(FsanetError, match=f"cannot write {photos}/image00002.jpg: it is an"):
        predict([str(photos)], estimator, output_dir=photos)
    assert _contents(photos) == before
    # Where no name lands on an input, the input folder is a valid output folder.
    clips = tmp_path / "clips"
    clips.mkdir()
    clip = _clip(shared, clips / "clip.avi", 2)
    summary = predict([str(clips)], estimator, output_dir=clips)
    assert summary.outputs == [str(clips / "clip.mp4")] and clip.read_bytes()


# --- OS errors while writing ---------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_and_what_was_written_stays_whole(
    fusion_artifact: Artifact, photos: Path, tmp_path: Path, run_cli: Run
) -> None:
    out = tmp_path / "out"
    result = run_cli("predict", str(photos), "-q", "--output", str(out), "--jsonl", "/dev/full")
    assert _error_line(result) == "fsanet: error: cannot write /dev/full: No space left on device"
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["image00002.jpg", "image00013.jpg"]
    for path in written:  # whole: each decodes to its photo's size
        assert cv2.imread(str(path)).shape == (450, 450, 3)


# Runs a command with files limited to argv[1] bytes: past it, writes fail with EFBIG (Python
# ignores SIGXFSZ), a real OS error while writing, as a full disk gives, without filling one.
# (Set in the child, not with preexec_fn: this process has the engine's threads.)
LIMITED = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@pytest.mark.parametrize("what", ["annotated image", "jsonl", "annotated video"])
def test_a_file_size_limit_while_writing_is_one_line_and_leaves_nothing_half_written(
    estimator: HeadPoseEstimator,  # YuNet fetched: the run under the limit only reads it
    fusion_artifact: Artifact,
    cli_command: list[str],
    shared: Path,
    tmp_path: Path,
    what: str,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    photo = cv2.imdecode(np.frombuffer(_jpeg(shared, PHOTOS[0]), np.uint8), cv2.IMREAD_COLOR)
    cv2.imwrite(str(tmp_path / "a-small.jpg"), photo)  # ~70 kB annotated
    cv2.imwrite(str(tmp_path / "b-large.jpg"), cv2.resize(photo, (1800, 1800)))  # ~550 kB
    jsonl = out / "records.jsonl"
    jsonl.write_text("an earlier run's records\n")
    classroom = str(shared / "videos" / "classroom.mp4")  # 40 frames: ~280 faces
    argv, limit, expected = {
        "annotated image": (
            [str(tmp_path / "a-small.jpg"), str(tmp_path / "b-large.jpg"), "--output", str(out)],
            250_000,
            f"cannot write {out}/b-large.jpg: File too large",
        ),
        "jsonl": (
            [classroom, "--frames", "40", "--jsonl", str(jsonl)],
            20_000,
            f"cannot write {jsonl}: File too large",
        ),
        "annotated video": (
            [classroom, "--frames", "40", "--output", str(out)],
            100_000,
            f"cannot write {out}/classroom.mp4: OpenCV could not finish the video",
        ),
    }[what]
    result = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *cli_command, "predict", "-q", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert _error_line(result).startswith(f"fsanet: error: {expected}")
    assert jsonl.read_text() == "an earlier run's records\n"  # the old file is kept whole
    assert _hidden(out) == []  # no temporary left
    names = sorted(p.name for p in out.iterdir())
    if what == "annotated image":  # the image written before the error stays, whole
        assert names == ["a-small.jpg", "records.jsonl"]
        assert cv2.imread(str(out / "a-small.jpg")).shape == (450, 450, 3)
    else:
        assert names == ["records.jsonl"]


# --- what a killed run left ----------------------------------------------------------------


def test_the_next_run_removes_what_a_killed_run_left(
    fusion_artifact: Artifact, photos: Path, shared: Path, tmp_path: Path, cli_command: list[str]
) -> None:
    out = tmp_path / "out"
    argv = ["predict", "-q", "--output", str(out), "--jsonl", str(out / "records.jsonl")]
    killed = subprocess.Popen([*cli_command, *argv, str(shared / "videos" / "classroom.mp4")])
    try:
        deadline = time.monotonic() + 240  # a guard against a hang, not a measurement
        while not (
            [p for p in out.glob(".classroom.mp4.*.tmp/classroom.mp4") if p.stat().st_size]
            and list(out.glob(".records.jsonl.*.tmp/records.jsonl"))
        ):
            assert killed.poll() is None, "predict ended before it could be killed"
            assert time.monotonic() < deadline, "no temporary appeared"
            time.sleep(0.1)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    left = _hidden(out)
    assert len(left) == 2 and all(f".{killed.pid}." in name for name in left), left
    assert main([*argv, str(photos / "image00002.jpg")]) == 0
    assert _hidden(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["image00002.jpg", "records.jsonl"]


# --- inputs that cannot be named or must not be read ---------------------------------------


def test_an_input_without_a_possible_output_name_is_skipped_and_counted(
    estimator: HeadPoseEstimator,
    fusion_artifact: Artifact,
    photos: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    # A name the file system takes, but not with the temporary name around it.
    limit = os.pathconf(photos, "PC_NAME_MAX")
    long = photos / ("a" * (limit - 20) + ".jpg")
    (photos / "image00013.jpg").rename(long)
    out, records = tmp_path / "out", io.StringIO()
    summary = predict([str(photos)], estimator, output_dir=out, jsonl=records)
    reason = "its output name is too long for the file system"
    assert summary.skipped == [f"{long}: {reason}"] and summary.to_dict()["skipped"] == [
        f"{long}: {reason}"
    ]
    assert summary.images == 1 and summary.failed == []
    assert summary.outputs == [str(out / "image00002.jpg")]
    assert [json.loads(r)["source"] for r in records.getvalue().splitlines()] == [
        str(photos / "image00002.jpg")
    ]
    assert str(summary).startswith("1/2 sources") and "1 skipped" in str(summary)
    assert f"fsanet: warning: skipping {long}: {reason}" in capsys.readouterr().err
    # From the command line: the run goes on (exit 0); with nothing left to do, exit 1.
    assert main(["predict", "-q", "--output", str(out), str(photos)]) == 0
    assert main(["predict", "-q", "--output", str(out), str(long)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "fsanet: error: no input could be predicted (1 tried: 1 skipped, 0 unreadable)"
    )


def test_a_fifo_or_a_device_is_refused_in_one_line(
    photos: Path, tmp_path: Path, run_cli: Run
) -> None:
    fifo = tmp_path / "stream.jpg"
    os.mkfifo(fifo)  # no writer: opening it would wait forever
    link = tmp_path / "video0"
    link.symlink_to("/dev/zero")  # named like a camera, but not one: endless bytes
    for path, kind in [(fifo, "a FIFO"), ("/dev/zero", "a character device"),
                       (link, "a character device")]:  # fmt: skip
        # The timeout only guards the suite against a regression that hangs.
        result = run_cli("predict", str(path), "-q", timeout=120)
        assert _error_line(result) == (
            f"fsanet: error: {path} is {kind}, not a file: give image or video files, folders, "
            "or a camera index"
        )
    assert camera_index(str(link)) is None and camera_index("3") == 3


def test_a_fifo_inside_a_folder_is_not_read(
    fusion_artifact: Artifact, photos: Path, tmp_path: Path, run_cli: Run
) -> None:
    os.mkfifo(photos / "stream.jpg")
    result = run_cli("predict", str(photos), "-q", "--jsonl", str(tmp_path / "r.jsonl"))
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2

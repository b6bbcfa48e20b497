"""Atomic writes and the debris of killed processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsanet.core.errors import FsanetError
from fsanet.core.files import (
    atomic_path,
    ensure_dir,
    name_fits,
    process_start_time,
    refuse_overwrites,
    remove_stale_outputs,
    remove_stale_temps,
    temp_folder,
)


def _tmp_dir(folder: Path, pid: int, name: str = "engine") -> Path:
    path = folder / f".{name}.{pid}.abc123.tmp"
    path.mkdir()
    (path / name).write_text("half-written")
    return path


@pytest.fixture
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def test_atomic_path_names_its_temporary_folder_with_the_pid(tmp_path):
    with atomic_path(tmp_path / "out.bin") as tmp:
        assert tmp.parent.name.startswith(f".out.bin.{os.getpid()}.")
        assert remove_stale_temps(tmp_path) == []  # our own work in progress is kept
        tmp.write_bytes(b"done")
    assert (tmp_path / "out.bin").read_bytes() == b"done"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_dead_writers_folder_is_removed(tmp_path, dead_pid):
    stale = _tmp_dir(tmp_path, dead_pid)
    keep = tmp_path / "engine"
    keep.mkdir()
    assert remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and keep.is_dir()


def test_a_running_writers_folder_is_kept(tmp_path, live_child):
    # Two builds at once: the other one's temporary folder is its work in progress.
    time.sleep(0.05)
    busy = _tmp_dir(tmp_path, live_child.pid)
    assert remove_stale_temps(tmp_path) == [] and busy.is_dir()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_reused_pid_does_not_protect_an_older_folder(tmp_path, live_child):
    # The folder was last written before the live process with its pid started: the pid
    # was reused after the writer died.
    old = _tmp_dir(tmp_path, live_child.pid)
    started = process_start_time(live_child.pid)
    assert started is not None and abs(started - time.time()) < 60
    os.utime(old, (started - 60, started - 60))
    assert remove_stale_temps(tmp_path) == [old]


def test_folders_without_a_pid_are_removed_only_when_a_day_old(tmp_path):
    fresh = tmp_path / ".engine.k2j4_x9q.tmp"
    old = tmp_path / ".other.npz.a1b2c3d4.tmp"
    fresh.mkdir()
    old.mkdir()
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    assert remove_stale_temps(tmp_path) == [old]
    assert fresh.is_dir()


def test_ensure_dir_names_the_file_in_the_way(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FsanetError, match=f"cannot write {blocker}/x: Not a directory"):
        ensure_dir(blocker / "x")
    with pytest.raises(FsanetError, match=f"cannot write {blocker}: {blocker} is a file"):
        ensure_dir(blocker)
    assert ensure_dir(tmp_path / "a" / "b").is_dir()


# --- a user's folders: what `fsanet predict` writes there ---------------------------------


def test_a_dead_writers_output_temporaries_are_removed_and_nothing_else(tmp_path, dead_pid):
    stale = _tmp_dir(tmp_path, dead_pid, "out.jsonl")
    stale.rename(stale := tmp_path / f".out.jsonl.{dead_pid}.k2j4_x9q.tmp")
    empty = tmp_path / f".clip.mp4.{dead_pid}.a1b2c3d4.tmp"  # killed before its first write
    empty.mkdir()
    old_video = tmp_path / f".clip.mp4.{dead_pid}.tmp.mp4"  # an earlier predict's temporary
    old_video.write_bytes(b"half a video")
    # The user's own: a pid-like name holding other files, a name without a pid (even a day
    # old), a file with a temporary's name, and a link to a temporary.
    theirs = tmp_path / f".photos.{dead_pid}.abcdefgh.tmp"
    theirs.mkdir()
    (theirs / "holiday.jpg").write_bytes(b"a photo")
    no_pid = tmp_path / ".backup.old.tmp"
    no_pid.mkdir()
    day_ago = time.time() - 25 * 3600
    os.utime(no_pid, (day_ago, day_ago))
    a_file = tmp_path / f".notes.txt.{dead_pid}.abcdefgh.tmp"
    a_file.write_text("mine")
    link = tmp_path / f".x.{dead_pid}.abcdefgh.tmp"
    link.symlink_to(empty)
    assert sorted(remove_stale_outputs(tmp_path)) == sorted([stale, empty, old_video])
    assert (theirs / "holiday.jpg").exists() and no_pid.is_dir() and a_file.exists()
    assert link.is_symlink()


def test_a_running_writers_output_temporaries_are_kept(tmp_path, live_child):
    time.sleep(0.05)
    busy = tmp_path / f".out.jsonl.{live_child.pid}.k2j4_x9q.tmp"
    busy.mkdir()
    video = tmp_path / f".clip.mp4.{live_child.pid}.tmp.mp4"
    video.write_bytes(b"")
    assert remove_stale_outputs(tmp_path) == [] and busy.is_dir() and video.exists()


def test_temp_folder_names_are_what_the_clean_up_removes(tmp_path):
    # The clean-up's pattern and temp_folder's names must agree, or debris stays forever.
    folder = temp_folder(tmp_path / "clip.mp4")
    (folder / "clip.mp4").write_bytes(b"")
    assert remove_stale_outputs(tmp_path) == []  # ours: this process is alive
    pid = str(os.getpid())
    gone = tmp_path / folder.name.replace(f".{pid}.", ".999999999.")  # no such process
    folder.rename(gone)
    assert remove_stale_outputs(tmp_path) == [gone] and list(tmp_path.iterdir()) == []


def test_an_output_that_is_an_input_is_refused(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"the user's photo")
    (tmp_path / "hard.jpg").hardlink_to(photo)
    (tmp_path / "link.jpg").symlink_to(photo)
    for output, message in [
        (photo, f"cannot write {photo}: it is an input, which would be lost"),
        (tmp_path / "hard.jpg", f"cannot write {tmp_path}/hard.jpg: it is the input {photo}"),
        (tmp_path / "link.jpg", f"cannot write {tmp_path}/link.jpg: it is the input {photo}"),
        (tmp_path / "sub" / ".." / "photo.jpg", "it is the input"),
    ]:
        with pytest.raises(FsanetError, match=message):
            refuse_overwrites([photo], [tmp_path / "new.jpg", output])
    assert photo.read_bytes() == b"the user's photo"
    other = tmp_path / "other.jpg"  # an earlier output: replaced, as any output is
    other.write_bytes(b"")
    refuse_overwrites([photo], [tmp_path / "new.jpg", other])


def test_two_outputs_at_one_path_are_refused(tmp_path):
    out = tmp_path / "out.jpg"
    with pytest.raises(FsanetError, match=f"cannot write {out}: {out} is written there too"):
        refuse_overwrites([], [out, tmp_path / "." / "out.jpg"])


def test_name_fits_counts_the_temporary_name(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert name_fits(tmp_path / "new" / "face.jpg")
    assert not name_fits(tmp_path / ("a" * (limit - 4) + ".jpg"))  # fits alone, not as temp
    assert not name_fits(tmp_path / ("d" * (limit + 1)) / "face.jpg")  # a folder too long
    deep = tmp_path.joinpath(*["d" * 200] * 25, "face.jpg")  # each name fits, not the path
    assert not name_fits(deep)

"""Atomic writes and the debris of killed processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsanet.core.errors import FsanetError
from fsanet.core.files import atomic_path, ensure_dir, process_start_time, remove_stale_temps


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

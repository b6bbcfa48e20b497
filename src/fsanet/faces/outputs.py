"""How `predict` writes: JSON Lines (atomically, OS errors in one line), annotated images,
and annotated videos renamed into place only when complete."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from fsanet.core.errors import FsanetError
from fsanet.core.files import (
    atomic_path,
    remove_stale_outputs,
    temp_folder,
    writing,
)


def write_image(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise FsanetError(f"cannot encode {path}: OpenCV has no writer for '{path.suffix}'")
    with atomic_path(path) as tmp, writing(path):
        tmp.write_bytes(data.tobytes())


@contextlib.contextmanager
def jsonl_writer(path: str | Path | None) -> Iterator[IO[str] | None]:
    """Where JSON Lines go: None (nowhere), '-' (stdout) or a file written atomically."""
    if path is None:
        yield None
    elif str(path) == "-":
        yield sys.stdout
    elif Path(path).is_dir():
        raise FsanetError(f"cannot write {path}: it is a folder; give a file name")
    elif Path(path).exists() and not Path(path).is_file():
        # A device or pipe (/dev/null, a FIFO): write to it, never rename over it.
        with Output(path, path) as out:
            yield out
    else:
        remove_stale_outputs(Path(path).absolute().parent)  # what a killed run left
        with atomic_path(Path(path)) as tmp, Output(tmp, path) as out:
            yield out


class Output(io.TextIOWrapper):
    """A text file opened for writing whose OS errors (disk full, I/O error, over the file
    size limit) are one line naming `name`, the path the user gave."""

    def __init__(self, file: str | Path, name: str | Path) -> None:
        self.name_given = name
        with writing(name):
            super().__init__(open(file, "wb"), encoding="utf-8")  # noqa: SIM115 (closed by close)

    def write(self, text: str) -> int:
        with writing(self.name_given):
            return super().write(text)

    def flush(self) -> None:
        with writing(self.name_given):
            super().flush()

    def close(self) -> None:
        with writing(self.name_given):
            super().close()


class VideoOut:
    """An annotated video written in a temporary folder beside its final name (named as
    `atomic_path` names them, so a killed run's is removed by the next) and renamed into
    place when done and complete."""

    def __init__(self, target: Path | None, fps: float, keep_on_interrupt: bool) -> None:
        self.target, self.fps, self.keep_on_interrupt = target, fps, keep_on_interrupt
        self._writer: cv2.VideoWriter | None = None
        self._folder: Path | None = None
        self._tmp: Path | None = None
        self._frames = 0

    def __enter__(self) -> VideoOut:
        if self.target is not None:
            # Made now: OpenCV's writer would only say it did not open.
            self._folder = temp_folder(self.target)
            self._tmp = self._folder / self.target.name
        return self

    @property
    def active(self) -> bool:
        """Whether frames are written (an output was asked for)."""
        return self._tmp is not None

    def write(self, frame: np.ndarray) -> None:
        if self._tmp is None:
            return
        if self._writer is None:
            height, width = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise FsanetError(f"cannot write {self.target}: OpenCV has no mp4v encoder")
        self._writer.write(frame)
        self._frames += 1

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if self._writer is not None:
                self._writer.release()
            keep = exc_type is None or (
                isinstance(exc_type, type)
                and issubclass(exc_type, KeyboardInterrupt)
                and self.keep_on_interrupt
            )
            if keep and self._writer is not None and self.target is not None:
                self._check_complete()
                with writing(self.target):
                    os.replace(self._tmp, self.target)  # type: ignore[arg-type]
        finally:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def _check_complete(self) -> None:
        """OpenCV's writer drops OS errors (disk full, over the file size limit) without a
        word: a video that does not open again with all its frames is not kept."""
        capture = cv2.VideoCapture(str(self._tmp))
        try:
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        finally:
            capture.release()
        if frames != self._frames:
            raise FsanetError(
                f"cannot write {self.target}: OpenCV could not finish the video ({frames} "
                f"of its {self._frames} frames read back; is the disk full?)"
            )

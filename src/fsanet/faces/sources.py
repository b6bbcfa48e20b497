"""What `predict` reads and where its outputs go: inputs resolved to images, videos and
cameras (FIFOs and devices refused), output names made once, and no output over an input."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fsanet.core.errors import FsanetError
from fsanet.core.files import (
    ensure_dir,
    refuse_overwrites,
)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2"}
)
# An animated GIF is a clip (with its own delay per frame); a still one is a clip of one frame.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}
)


# --- sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input: an image file, a video file or a camera index; `name` is used for outputs."""

    kind: str  # "image", "video" or "camera"
    location: str
    name: str


def collect_sources(paths: list[str], *, quiet: bool = False) -> list[Source]:
    """Expand files, folders (recursive, common image and video formats) and cameras (an
    index, or a /dev/videoN device); `quiet`: no warning for a folder without any.

    A path that does not exist is an error for the whole run: it is almost always a typo;
    so is a FIFO or a device that is no camera (reading it could wait forever, or never end).
    """
    sources: list[Source] = []
    for text in paths:
        if text.isdigit() and not Path(text).exists():
            sources.append(Source("camera", text, f"camera{text}"))
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
            )
            if not found and not quiet:
                print(f"fsanet: warning: {path} holds no images or videos", file=sys.stderr)
            sources += [_file_source(p, p.relative_to(path).as_posix()) for p in found]
        elif path.is_file():
            sources.append(_file_source(path, path.name))
        elif (index := camera_index(text)) is not None:
            sources.append(Source("camera", text, f"camera{index}"))
        elif path.exists():
            raise FsanetError(
                f"{text} is {_special_kind(path)}, not a file: give image or video files, "
                "folders, or a camera index"
            )
        else:
            raise FsanetError(
                f"{text} does not exist: give image or video files, folders, or a camera index"
            )
    return _unique_names(sources)


def camera_index(location: str) -> int | None:
    """The camera a location names: an index ('0'), or a /dev/videoN device (or a link to
    one, as /dev/v4l/by-id/... are); None for anything else."""
    if location.isdigit() and not os.path.exists(location):
        return int(location)
    match = re.fullmatch(r"/dev/video(\d+)", os.path.realpath(location))
    if match is None:
        return None
    try:
        return int(match[1]) if stat.S_ISCHR(os.stat(location).st_mode) else None
    except OSError:
        return None


def _special_kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _unique_names(sources: list[Source]) -> list[Source]:
    """Two inputs with one name (a/face.jpg, b/face.jpg) get two outputs: face.jpg, face-2.jpg.
    Names are compared as their outputs are written: a video's as .mp4, case-folded."""
    taken: set[str] = set()
    out = []
    for source in sources:
        name, n = source.name, 1
        while _output_key(source.kind, name) in taken:
            n += 1
            path = Path(source.name)
            name = path.with_name(f"{path.stem}-{n}{path.suffix}").as_posix()
        taken.add(_output_key(source.kind, name))
        out.append(Source(source.kind, source.location, name))
    return out


def _output_key(kind: str, name: str) -> str:
    path = Path(name.lower())
    if kind != "image" or path.suffix not in IMAGE_SUFFIXES:
        path = path.with_suffix(".mp4" if kind != "image" else ".png")
    return path.as_posix()


def output_path(source: Source, out_dir: Path) -> Path:
    """Where `source`'s annotated copy goes: its name under `out_dir`; a video or camera as
    .mp4, an image in a format OpenCV does not write as .png."""
    target = out_dir / source.name
    if source.kind != "image":
        return target.with_suffix(".mp4")
    return target if target.suffix.lower() in IMAGE_SUFFIXES else target.with_suffix(".png")


def check_outputs(
    paths: list[str], output_dir: str | Path | None = None, files: Iterable[str | Path] = ()
) -> None:
    """Refuse (FsanetError) a run over `paths` whose outputs would replace one of its inputs:
    an annotated copy under `output_dir`, or one of `files` (the JSON Lines or Parquet file;
    '-' is stdout), that is an input or another name of one. Nothing is read or written; a
    path that does not exist, or a FIFO, is refused as `collect_sources` refuses it."""
    sources = collect_sources(paths, quiet=True)
    annotated = [] if output_dir is None else [output_path(s, Path(output_dir)) for s in sources]
    refuse_input_overwrites(sources, [*annotated, *(Path(f) for f in files if str(f) != "-")])


def check_output_paths(
    paths: list[str], output_dir: str | Path | None, records: str | Path | None
) -> None:
    """Fail on an output that cannot be written now, or that would replace an input, before
    an engine is loaded (or built) and any input read: the annotated copies' folder
    `output_dir` and the `records` file ('-': stdout)."""
    if output_dir is not None:
        ensure_dir(Path(output_dir))
    if records not in (None, "-"):
        path = Path(records)  # type: ignore[arg-type]
        if path.is_dir():
            raise FsanetError(f"cannot write {path}: it is a folder; give a file name")
        if not path.exists():
            ensure_dir(path.parent, path)
    check_outputs(paths, output_dir, [records] if records is not None else [])


def refuse_input_overwrites(sources: list[Source], outputs: list[Path]) -> None:
    refuse_overwrites((s.location for s in sources if s.kind != "camera"), outputs)


def _file_source(path: Path, name: str) -> Source:
    kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
    return Source(kind, str(path), name)

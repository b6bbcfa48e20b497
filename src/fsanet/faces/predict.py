"""Head pose in the wild: detect faces, crop them as FSA-Net expects, run the engine.

`HeadPoseEstimator` is the Python API (a BGR image in, a list of `Face` out);
`predict` runs it over images, folders, video files and cameras, writing JSON Lines,
annotated images/videos and returning a `PredictSummary`. In video, faces carry a track id
(`fsanet.faces.tracking`) and, with `smooth`, One Euro filtered angles; decode, detection and
pose run as a pipeline (`fsanet.faces.video`). The angle convention and
`Face.rotation_matrix` are in docs/CONVENTIONS.md.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.core.files import (
    name_fits,
    remove_stale_outputs,
)
from fsanet.faces.estimator import HeadPoseEstimator, annotate
from fsanet.faces.face import Face, Faces
from fsanet.faces.options import MAX_PIXELS
from fsanet.faces.outputs import VideoOut, write_image
from fsanet.faces.sources import (
    Source,
    camera_index,
    collect_sources,
    output_path,
    refuse_input_overwrites,
)
from fsanet.faces.tracking import OneEuro
from fsanet.faces.video import (
    FaceStages,
    SceneCuts,
    VideoFrame,
    VideoOptions,
    decoded,
    video_frames,
)
from fsanet.faces.vision.imageio import image_size

# --- the run -------------------------------------------------------------------------------


@dataclass
class PredictSummary:
    """What a `predict` run did."""

    sources: int = 0
    failed: list[str] = field(default_factory=list)  # "source: reason"
    images: int = 0
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # "source: kept N of M faces"
    incomplete: list[str] = field(default_factory=list)  # "video: ended at frame N of M"
    skipped: list[str] = field(default_factory=list)  # "source: why no output can be made"

    def outputs_paths(self) -> list[Path]:
        return [Path(p) for p in self.outputs]

    @property
    def fps(self) -> float:
        return (self.images + self.frames) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "failed": self.failed,
            "images": self.images,
            "frames": self.frames,
            "faces": self.faces,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "outputs": self.outputs,
            "truncated": self.truncated,
            "incomplete": self.incomplete,
            "skipped": self.skipped,
        }

    def __str__(self) -> str:
        text = (
            f"{self.sources - len(self.failed) - len(self.skipped)}/{self.sources} sources: "
            f"{self.images} images, "
            f"{self.frames} video frames, {self.faces} faces in {self.seconds:.1f} s "
            f"({self.fps:.1f} frames/s)"
        )
        if self.failed:
            text += f"; {len(self.failed)} could not be read"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped (no output name could be made)"
        if self.truncated:
            text += f"; {len(self.truncated)} with more faces than --max-faces (best kept)"
        if self.incomplete:
            text += f"; {len(self.incomplete)} videos ended early"
        return text


def face_record(
    source: Source,
    frame: int | None,
    index: int,
    face: Face,
    time: float | None = None,
    rotation: bool = False,
) -> dict[str, Any]:
    """One JSON Lines record (the server's stream answers hold the same); `time` is the
    frame's time in seconds (video), `track` the face's track id (video; null for images),
    `rotation` adds the 3x3 matrix by rows."""
    record = {
        "source": source.location,
        "frame": frame,
        "time": None if time is None else round(time, 3),
        "face": index,
        "track": face.track,
        **face.to_dict(),
    }
    if rotation:
        record["rotation"] = [[round(v, 6) for v in row] for row in face.rotation_matrix()]
    return record


class Refused(Exception):
    """An input skipped with a reason."""


def _read_image(path: str, max_pixels: int) -> np.ndarray:
    # imdecode on the bytes: imread cannot open non-ASCII paths on every platform.
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise Refused(f"cannot be read ({e.strerror or e})") from e
    return decode_image(data, max_pixels)


def decode_image(data: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file's bytes (uint8) as a BGR image, or Refused saying why not."""
    # PNG and JPEG say their size in the header: a bomb is refused before it is decoded;
    # other formats are checked once decoded (OpenCV itself refuses over 2^30 pixels).
    size = image_size(data[:65536].tobytes())
    if size is not None:
        _check_pixels(*size, max_pixels)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise Refused("not an image OpenCV can decode")
    _check_pixels(image.shape[1], image.shape[0], max_pixels)
    return image


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise Refused(
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            "(--max-pixels)"
        )


def predict(
    paths: list[str],
    estimator: HeadPoseEstimator,
    *,
    output_dir: str | Path | None = None,
    jsonl: IO[str] | None = None,
    max_frames: int | None = None,
    max_pixels: int = MAX_PIXELS,
    rotation: bool = False,
    smooth: OneEuro | None = None,
    video: VideoOptions | None = None,
    on_frame: Callable[[VideoFrame], None] | None = None,
) -> PredictSummary:
    """Run `estimator` over every source; files that cannot be read, or images of more than
    `max_pixels`, are reported and skipped. `rotation` adds each face's 3x3 rotation matrix
    to its record; `smooth` filters each video track's angles (raw values kept as `raw`).
    `video` says how video runs (default: pipelined, every frame, full size; see
    `fsanet.faces.video`); `on_frame` is called with each video frame once written, its stage
    times in `frame.seconds`.

    Raises FsanetError if a path does not exist, if the paths hold no image or video, or if
    no source at all could be read.
    """
    sources = collect_sources(paths)
    if not sources:
        raise FsanetError(f"no images or videos in {', '.join(paths)}")
    summary = PredictSummary(sources=len(sources))
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None:
        sources = _with_output_names(sources, out_dir, summary)
        refuse_input_overwrites(sources, [output_path(s, out_dir) for s in sources])
        for folder in {output_path(s, out_dir).parent for s in sources}:
            remove_stale_outputs(folder)  # what a killed run left
    start = time.perf_counter()
    images = [s for s in sources if s.kind == "image"]
    with progress.bar(total=len(images), desc="images", unit="img") as bar:
        for source in images:
            try:
                image = _read_image(source.location, max_pixels)
            except Refused as e:
                _fail(summary, source, str(e))
                continue
            finally:
                bar.update()
            faces = estimator(image)
            _emit(jsonl, image_records(source, faces, summary, rotation))
            if out_dir is not None:
                target = output_path(source, out_dir)
                write_image(target, annotate(image, faces))
                summary.outputs.append(str(target))
            bar.set_postfix(fps=f"{summary.images / (time.perf_counter() - start):.1f}")
    for source in (s for s in sources if s.kind != "image"):
        _run_video(
            source,
            estimator,
            summary,
            out_dir,
            jsonl,
            max_frames,
            rotation,
            smooth,
            video,
            on_frame,
        )
    summary.seconds = time.perf_counter() - start
    if len(summary.failed) + len(summary.skipped) == summary.sources:
        if summary.skipped:
            raise FsanetError(
                f"no input could be predicted ({summary.sources} tried: "
                f"{len(summary.skipped)} skipped, {len(summary.failed)} unreadable)"
            )
        raise FsanetError(f"no input could be read ({summary.sources} tried)")
    return summary


def _with_output_names(
    sources: list[Source], out_dir: Path, summary: PredictSummary
) -> list[Source]:
    """The sources whose annotated copy can be named under `out_dir`; the others (a name
    too long for the file system) are skipped and said, as unreadable inputs are."""
    kept = []
    for source in sources:
        if name_fits(output_path(source, out_dir)):
            kept.append(source)
            continue
        reason = "its output name is too long for the file system"
        summary.skipped.append(f"{source.location}: {reason}")
        print(f"fsanet: warning: skipping {source.location}: {reason}", file=sys.stderr)
    return kept


def image_records(
    source: Source, faces: Faces, summary: PredictSummary, rotation: bool = False
) -> list[dict[str, Any]]:
    """The JSON Lines records of one image's faces, counted into `summary`."""
    summary.images += 1
    summary.faces += len(faces)
    _note_truncated(summary, source, faces)
    return [face_record(source, None, i, f, rotation=rotation) for i, f in enumerate(faces)]


def video_records(
    source: Source,
    estimator: HeadPoseEstimator,
    summary: PredictSummary,
    *,
    max_frames: int | None = None,
    rotation: bool = False,
    smooth: OneEuro | None = None,
    video: VideoOptions | None = None,
) -> list[dict[str, Any]]:
    """The JSON Lines records of one video file in frame order, counted into `summary` (a
    video is one unit: its faces are tracked frame by frame)."""
    out = io.StringIO()
    _run_video(source, estimator, summary, None, out, max_frames, rotation, smooth, video)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _note_truncated(
    summary: PredictSummary, source: Source, faces: list[Face], frame: int | None = None
) -> None:
    """Record and say (once per source) that an image had more faces than were kept."""
    if not isinstance(faces, Faces) or not faces.truncated:
        return
    where = source.location if frame is None else f"{source.location} frame {frame}"
    first = not any(t.startswith(f"{source.location}") for t in summary.truncated)
    summary.truncated.append(f"{where}: kept {len(faces)} of {faces.total} faces")
    if first:
        print(
            f"fsanet: warning: {where} has {faces.total} faces: kept the {len(faces)} best "
            "(--max-faces)",
            file=sys.stderr,
        )


def _fail(summary: PredictSummary, source: Source, reason: str) -> None:
    summary.failed.append(f"{source.location}: {reason}")
    print(f"fsanet: warning: skipping {source.location}: {reason}", file=sys.stderr)


def _emit(jsonl: IO[str] | None, records: list[dict[str, Any]]) -> None:
    if jsonl is not None:
        for record in records:
            jsonl.write(json.dumps(record) + "\n")


def _run_video(
    source: Source,
    estimator: HeadPoseEstimator,
    summary: PredictSummary,
    out_dir: Path | None,
    jsonl: IO[str] | None,
    max_frames: int | None,
    rotation: bool = False,
    smooth: OneEuro | None = None,
    options: VideoOptions | None = None,
    on_frame: Callable[[VideoFrame], None] | None = None,
) -> None:
    camera = source.kind == "camera"
    options = options or VideoOptions()
    capture = _open_video(source, single_thread=options.pipelined)
    if not capture.isOpened():
        _fail(summary, source, "cannot be opened as a video" if not camera else "no such camera")
        return
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not camera else 0
    if max_frames is not None:
        total = min(total, max_frames) if total > 0 else max_frames
    target = None
    if out_dir is not None:
        target = output_path(source, out_dir)
        if not camera and Path(source.name).suffix.lower() != ".mp4":
            print(f"fsanet: note: {source.location} is written as {target} (mp4v)", file=sys.stderr)
    frames_before = summary.frames
    stages = FaceStages(estimator, options, smooth)
    cuts = None if options.cut_threshold is None else SceneCuts(options.cut_threshold)
    frames = video_frames(
        decoded(
            capture.read,
            fps,
            camera=camera,
            max_frames=max_frames,
            position=lambda: capture.get(cv2.CAP_PROP_POS_MSEC),
            cuts=cuts,
        ),
        stages,
        camera=camera,
    )
    try:
        with (
            VideoOut(target, fps, camera) as writer,
            progress.bar(total=total or None, desc=source.name, unit="frame") as bar,
        ):
            start = time.perf_counter()
            for done, frame in enumerate(frames, 1):
                written = time.perf_counter()
                if frame.detections is not None:
                    found = Faces(frame.faces, total=frame.total)
                    _note_truncated(summary, source, found, frame.index)
                faces = frame.faces
                summary.frames += 1
                summary.faces += len(faces)
                _emit(
                    jsonl,
                    [
                        face_record(source, frame.index, i, f, frame.time, rotation)
                        for i, f in enumerate(faces)
                    ],
                )
                if writer.active:  # drawing costs ~1 ms a frame: only for an output
                    writer.write(annotate(frame.image, faces))
                end = time.perf_counter()
                frame.seconds["write"] = end - written
                frame.seconds["latency"] = end - frame.started
                if on_frame is not None:
                    on_frame(frame)
                bar.update()
                bar.set_postfix(fps=f"{done / (end - start):.1f}")
    except KeyboardInterrupt:
        if not camera:
            raise  # a camera runs until stopped; a file stopped early is an interruption
    finally:
        frames.close()  # every stage thread stopped before the capture goes
        capture.release()
    read = summary.frames - frames_before
    if read == 0:
        _fail(summary, source, "no frame could be decoded")
        return
    if target is not None:
        summary.outputs.append(str(target))
    if not camera and read < total and (max_frames is None or read < max_frames):
        summary.incomplete.append(f"{source.location}: ended at frame {read} of {total}")
        print(
            f"fsanet: warning: {source.location} ended after {read} of its {total} frames "
            "(truncated or damaged)",
            file=sys.stderr,
        )


def _open_video(source: Source, *, single_thread: bool) -> cv2.VideoCapture:
    """A camera, or a file; `single_thread`: FFmpeg decodes a file on one thread. In the
    pipeline, decoding has a thread of its own, and FFmpeg's extra threads only cost CPU the
    other stages want (talking-head.mp4, every 3rd frame at 256 px: 5.4 instead of 6.2 ms
    of CPU a frame, 330 instead of 277 frames/s; docs/VIDEO.md)."""
    if source.kind == "camera":
        return cv2.VideoCapture(camera_index(source.location))
    if single_thread:
        capture = cv2.VideoCapture(source.location, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if capture.isOpened():
            return capture
    return cv2.VideoCapture(source.location)  # any backend OpenCV finds, its own threads

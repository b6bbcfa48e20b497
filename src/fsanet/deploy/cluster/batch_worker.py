"""The Ray Data actor of `fsanet predict --ray`: one per worker process, holding YuNet and the
pose engine, loaded once from files the driver sent through the object store (sha256-checked
on arrival; a worker never builds).

A batch of images, or one video (its faces are tracked frame by frame, so it runs in order on
one worker), goes through the same code as in `fsanet predict`, with the same engine calls:
each file gives one output row, its records as JSON Lines text and what happened to it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from fsanet.deploy.cluster.transfer import Package, scratch_folder, unpack
from fsanet.engine.artifact import Artifact
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.options import DEFAULT_RULE, MAX_FACES, SCORE_THRESHOLD
from fsanet.faces.predict import (
    MAX_PIXELS,
    PredictSummary,
    Refused,
    decode_image,
    image_records,
    video_records,
)
from fsanet.faces.sources import Source
from fsanet.faces.tracking import OneEuro
from fsanet.faces.video import VideoOptions
from fsanet.faces.vision.crop import MARGIN

NOTES = ("failed", "truncated", "incomplete")  # PredictSummary's lists, carried back per file


@dataclass(frozen=True)
class WorkerOptions:
    """What each worker does with a file: `fsanet predict`'s options, and its threads."""

    crop: str = DEFAULT_RULE
    margin: float = MARGIN
    normalize: bool = False
    score_threshold: float = SCORE_THRESHOLD
    max_faces: int = MAX_FACES
    max_pixels: int = MAX_PIXELS
    max_frames: int | None = None
    rotation: bool = False
    smooth: OneEuro | None = None
    # As `fsanet predict` runs video (pipelined, frames posed in groups): a crop's angles
    # move by ~1e-6 degrees with the crops beside it in an engine call, so the same groups.
    video: VideoOptions = field(default_factory=VideoOptions)
    threads: int = 1  # engine and OpenCV threads of a worker (the CPUs it asks Ray for)


class Poser:
    """`map_batches` callable: a batch of files (`bytes`, `path`) -> one row per file.

    `engine` and `detector` are object-store references to `transfer.Package`s; `units` one
    to {path read: [(order, kind, location), ...]}."""

    def __init__(self, engine: Any, detector: Any, units: Any, options: WorkerOptions) -> None:
        import cv2
        import ray

        from fsanet.engine.pose import PoseEngine
        from fsanet.faces.vision.detect import YuNet

        # OpenCV's pool defaults to every core of the node: keep to this worker's share.
        cv2.setNumThreads(options.threads)
        self.options = options
        self.units: dict[str, list[tuple[int, str, str]]] = ray.get(units)
        self._scratch = scratch_folder("batch")
        try:
            engine_files: Package = ray.get(engine)
            detector_files: Package = ray.get(detector)
            # Each file checked against the driver's sha256, then the engine's model files
            # against its manifest's.
            artifact = Artifact.load(unpack(engine_files, self._scratch / "engine"), verify=True)
            (yunet,) = detector_files.files
            folder = unpack(detector_files, self._scratch / "detector")
            detector_ = YuNet(
                folder / yunet, score_threshold=options.score_threshold, threads=options.threads
            )
            pose = PoseEngine.from_artifact(artifact, options.threads).load()
        except BaseException:
            self.close()
            raise
        self.estimator = HeadPoseEstimator(
            pose,
            detector_,
            crop=options.crop,
            margin=options.margin,
            normalize=options.normalize,
            max_faces=options.max_faces,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        results: dict[int, tuple[list[dict[str, Any]], PredictSummary]] = {}
        for path, data in zip(batch["path"], batch["bytes"], strict=True):
            # A file given twice (a folder and a file in it) is read once, recorded twice.
            for order, kind, location in self.units[str(path)]:
                summary = PredictSummary(sources=1)
                source = Source(kind, location, location)
                if kind == "video":
                    results[order] = (self._video(source, bytes(data), summary), summary)
                else:
                    results[order] = (self._image(source, data, summary), summary)
        return _rows(results)

    def _image(self, source: Source, data: bytes, summary: PredictSummary) -> list[dict[str, Any]]:
        try:
            image = decode_image(np.frombuffer(data, np.uint8), self.options.max_pixels)
        except Refused as e:  # as `fsanet predict` notes a file it skips
            summary.failed.append(f"{source.location}: {e}")
            return []
        # One engine call per image, as `fsanet predict` makes it: a crop's angles move by
        # ~1e-6 degrees with the crops beside it in a call (fp32 kernels), and the records
        # are to be the same.
        return image_records(source, self.estimator(image), summary, self.options.rotation)

    def _video(self, source: Source, data: bytes, summary: PredictSummary) -> list[dict[str, Any]]:
        """A video's records: its bytes written to a local file OpenCV opens, named in the
        records and notes by its location."""
        suffix = PurePosixPath(source.location).suffix
        path = self._scratch / f"video{suffix}"
        path.write_bytes(data)
        try:
            local = replace(source, location=str(path))
            o = self.options
            records = video_records(
                local,
                self.estimator,
                summary,
                max_frames=o.max_frames,
                rotation=o.rotation,
                smooth=o.smooth,
                video=o.video,
            )
        finally:
            path.unlink(missing_ok=True)
        for record in records:
            record["source"] = source.location
        for name in NOTES:
            notes = getattr(summary, name)
            notes[:] = [n.replace(str(path), source.location, 1) for n in notes]
        return records

    def close(self) -> None:
        if hasattr(self, "estimator"):
            self.estimator.close()
        if hasattr(self, "_scratch"):
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __del__(self) -> None:  # the actor is going: its files with it
        self.close()


def _rows(results: dict[int, tuple[list[dict[str, Any]], PredictSummary]]) -> dict[str, list[Any]]:
    """Columns of the output rows: the file's place, its JSON Lines, its counts and notes."""
    out: dict[str, list[Any]] = {"order": [], "jsonl": [], "summary": []}
    for order, (records, summary) in sorted(results.items()):
        out["order"].append(order)
        out["jsonl"].append("".join(json.dumps(r) + "\n" for r in records))
        counts = {k: getattr(summary, k) for k in ("images", "frames", "faces", *NOTES)}
        out["summary"].append(json.dumps(counts))
    return out

"""How faces are found, cropped, tracked and smoothed: the defaults and the option records.

Everything the CLI shows as a default is defined here once. This module imports no
OpenCV and no runtime, so building a parser stays cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fsanet.core.errors import FsanetError

CROP_RULES = ("thirds", "landmarks", "demo")  # see fsanet.faces.vision.crop
DEFAULT_RULE = "thirds"
SCORE_THRESHOLD = 0.5  # YuNet's score threshold for photos, video and the service
# Scoring on AFLW2000's photos: each holds one labelled face, so its best detection is
# taken whatever its score. Any floor below every photo's best score gives the same result;
# 0.1 just keeps YuNet's NMS from sorting thousands of empty anchors (threshold 0 runs 3x
# slower, same numbers).
E2E_SCORE_THRESHOLD = 0.1
MAX_FACES = 256  # faces per image sent to the engine, best score first (the server's too)
MAX_PIXELS = 40_000_000  # larger images are refused, before decoding where the header says
RECORD_FORMATS = ("jsonl", "parquet")  # the records file of `predict` (Parquet with --ray)
MIN_DETECT_SIZE = 64  # YuNet's smallest anchors need some pixels to look at
CUT_THRESHOLD = 20.0  # grey levels: between the largest in-shot change (13.6) and a cut (27.7)


@dataclass(frozen=True)
class VideoOptions:
    """How video runs: pipelined or not, detection every k-th frame, at what size."""

    pipelined: bool = True
    detect_every: int = 1
    detect_size: int | None = None  # long side in pixels; None: the frame's own size
    depth: int = 4  # frames queued between two stages of a file
    # Pipelined: detector and engine each on a share of the cores (`core_split`). Off by
    # default: measured on 2 quiet cores it costs 5-20% (docs/VIDEO.md); it pays only
    # when other work crowds the cores.
    split_cores: bool = False
    batch_frames: int = 4  # pipelined file: consecutive frames posed in one engine call
    batch_crops: int = 32  # ... and at most this many crops in it (a frame is never cut)
    # Pipelined file: frames detected at once, each on its share of the detector's threads
    # (one frame on one core beats one frame on two: no hand-over at every layer).
    detect_workers: int = 2
    # A frame this unlike the one before (fsanet.faces.video.cuts) is detected, never carried,
    # and ends every track. None: no cut detection.
    cut_threshold: float | None = CUT_THRESHOLD

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise FsanetError(f"--detect-every must be at least 1, got {self.detect_every}")
        if self.detect_size is not None and self.detect_size < MIN_DETECT_SIZE:
            raise FsanetError(
                f"--detect-size must be at least {MIN_DETECT_SIZE} pixels, got {self.detect_size}"
            )
        if self.depth < 1:
            raise FsanetError(f"queue depth must be at least 1, got {self.depth}")
        if self.batch_frames < 1 or self.batch_crops < 1:
            raise FsanetError("frames and crops per engine call must be at least 1")
        if self.detect_workers < 1:
            raise FsanetError(f"detect workers must be at least 1, got {self.detect_workers}")
        if self.cut_threshold is not None and self.cut_threshold <= 0:
            raise FsanetError(f"the scene-cut threshold must be positive, got {self.cut_threshold}")

    @property
    def real_time(self) -> bool:
        return self.detect_every > 1 or self.detect_size is not None

    def describe(self) -> str:
        parts = ["pipelined" if self.pipelined else "sequential"]
        parts.append(f"detect every {self.detect_every}" if self.detect_every > 1 else "")
        parts.append(f"detect at {self.detect_size} px" if self.detect_size else "")
        if self.pipelined:  # what differs from the default pipeline
            parts.append("cores split" if self.split_cores else "")
            parts.append("" if self.batch_frames > 1 else "1 frame per engine call")
            workers = self.detect_workers
            parts.append(
                "" if workers == 2 else f"{workers} frame{'s' * (workers > 1)} detected at once"
            )
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class OneEuro:
    """Parameters; the defaults were chosen on the real clips (docs/VIDEO.md)."""

    min_cutoff: float = 0.5  # Hz: smoothing of a still head (lower: smoother, more lag)
    beta: float = 0.02  # Hz per degree/s: how fast the cutoff opens during a turn
    d_cutoff: float = 1.0  # Hz: smoothing of the speed estimate

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise FsanetError(
                f"One Euro parameters must be positive (min_cutoff {self.min_cutoff}, "
                f"beta {self.beta}, d_cutoff {self.d_cutoff})"
            )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

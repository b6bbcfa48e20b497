"""Video through a pipeline: decode, detection and pose overlapping across the cores."""

from fsanet.faces.options import CUT_THRESHOLD
from fsanet.faces.video.cuts import SceneCuts
from fsanet.faces.video.handoff import Bounded, Closed, Latest, background, ordered_map
from fsanet.faces.video.run import (
    STAGES,
    FaceStages,
    ThreadShares,
    VideoFrame,
    VideoOptions,
    core_split,
    decoded,
    video_frames,
)

__all__ = [
    "CUT_THRESHOLD",
    "STAGES",
    "Bounded",
    "Closed",
    "FaceStages",
    "Latest",
    "SceneCuts",
    "ThreadShares",
    "VideoFrame",
    "VideoOptions",
    "background",
    "core_split",
    "decoded",
    "ordered_map",
    "video_frames",
]

"""How the service is laid out on Ray: replicas, the CPUs each asks for, where they may run.

No Ray import here: the CLI checks `--replicas` before Ray is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fsanet.assets.type1 import MARGIN
from fsanet.core.errors import FsanetError
from fsanet.faces.options import DEFAULT_RULE, SCORE_THRESHOLD

# Autoscaling targets: requests a replica holds at once before Ray adds one. A pose request
# is a whole batch, so one running and one waiting keeps a replica busy; a detector replica
# runs one image per CPU, so the same.
POSE_TARGET = 2.0
DETECT_TARGET = 2.0


@dataclass(frozen=True)
class Replicas:
    """A fixed number of replicas per deployment, or (`auto`) Ray Serve autoscaling between
    `min` and `max` (`max` None: as many as the cluster's CPUs allow)."""

    min: int = 1
    max: int | None = 1
    auto: bool = False

    @classmethod
    def parse(cls, text: str) -> Replicas:
        """`N`, `auto`, or `MIN-MAX` (autoscaling between the two)."""
        text = text.strip().lower()
        if text == "auto":
            return cls(1, None, auto=True)
        if re.fullmatch(r"\d+", text):
            n = int(text)
            if n < 1:
                raise FsanetError(f"replicas must be 1 or more, got {n}")
            return cls(n, n)
        if match := re.fullmatch(r"(\d+)-(\d+)", text):
            low, high = int(match.group(1)), int(match.group(2))
            if not 1 <= low <= high:
                raise FsanetError(f"replicas MIN-MAX needs 1 <= MIN <= MAX, got {text}")
            return cls(low, high, auto=True)
        raise FsanetError(f"replicas must be N, MIN-MAX or auto, got '{text}'")

    def __str__(self) -> str:
        if not self.auto:
            return str(self.min)
        return f"auto {self.min}-{'cluster CPUs' if self.max is None else self.max}"


@dataclass(frozen=True)
class RayOptions:
    """Where and how `fsanet serve --ray` runs.

    `address`: an existing cluster (`ray start --head` printed it; `auto` on one of its
    nodes); None starts a local one on 127.0.0.1 for the life of the server. `replicas`
    applies to the pose and the detection deployments each (they scale separately). Each
    replica asks Ray for `replica_cpus` CPUs and runs its engine or detector on that many
    threads; a pose replica also asks for `pose_gpus` GPUs (Ray hides the GPUs from replicas
    that ask for none). `pose_resources` and `detect_resources` are custom Ray resources a
    replica also asks for, to pin it to the nodes that declare them
    (`ray start --resources '{"gpu_node": 1}'`).
    """

    address: str | None = None
    replicas: Replicas = field(default_factory=Replicas)
    replica_cpus: float = 1.0
    pose_gpus: float = 0.0
    pose_resources: dict[str, float] = field(default_factory=dict)
    detect_resources: dict[str, float] = field(default_factory=dict)
    app: str = "fsanet"  # Ray Serve application names: `<app>-pose`, `<app>-detect`

    def __post_init__(self) -> None:
        if not self.replica_cpus > 0:
            raise FsanetError(f"replica CPUs must be positive, got {self.replica_cpus:g}")
        if not self.pose_gpus >= 0:
            raise FsanetError(f"pose replica GPUs must be 0 or more, got {self.pose_gpus:g}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.app):
            raise FsanetError(f"application name '{self.app}' may hold letters, digits, _ . -")

    @property
    def threads(self) -> int:
        """Engine or detector threads in one replica."""
        return max(1, int(self.replica_cpus))


@dataclass(frozen=True)
class FaceOptions:
    """Face detection for `POST /v1/pose`: YuNet's threshold and the crop rule (the same
    defaults as `HeadPoseEstimator`, which single-process `fsanet serve` uses)."""

    score_threshold: float = SCORE_THRESHOLD
    crop: str = DEFAULT_RULE
    margin: float = MARGIN
    normalize: bool = False

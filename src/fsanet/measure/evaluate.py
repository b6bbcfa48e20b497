"""AFLW2000 accuracy: mean absolute error per axis, per variant and for the fusion."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fsanet.assets.aflw2000 import Aflw2000
from fsanet.assets.zoo import FUSION, FUSION_PAPER, VARIANTS, PaperResult
from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import NONE, is_view, view_name
from fsanet.measure.defaults import EVAL_BATCH

_RULE = "-" * 80


@dataclass(frozen=True)
class AxisErrors:
    """MAE in degrees: per axis, and `mae` = the mean of the three (FSA-Net's number)."""

    yaw: float
    pitch: float
    roll: float
    mae: float

    @classmethod
    def between(cls, predictions: np.ndarray, labels: np.ndarray) -> AxisErrors:
        yaw, pitch, roll = np.abs(predictions.astype(np.float64) - labels).mean(axis=0)
        return cls(float(yaw), float(pitch), float(roll), float((yaw + pitch + roll) / 3))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _paper(name: str) -> PaperResult | None:
    return FUSION_PAPER if name == FUSION else VARIANTS[name].paper if name in VARIANTS else None


@dataclass(frozen=True)
class EvalReport:
    num_images: int
    results: dict[str, AxisErrors]  # variant names and `fusion`
    engine: str
    backend: str
    precision: str
    seconds: float
    tta: str = NONE
    without_tta: AxisErrors | None = None  # a TTA engine's headline on the crop alone

    @property
    def main(self) -> str:
        """The headline result: the fusion where there is one, else the single variant."""
        return FUSION if FUSION in self.results else next(iter(self.results))

    def to_dict(self) -> dict[str, Any]:
        main = self.results[self.main]
        return {
            "num_images": self.num_images,
            "model": self.main,
            **main.to_dict(),
            "variants": {k: v.to_dict() for k, v in self.results.items() if k != FUSION},
            "paper": {k: asdict(p) for k in self.results if (p := _paper(k))},
            "engine": {"name": self.engine, "backend": self.backend, "precision": self.precision},
            "seconds": round(self.seconds, 3),
            "tta": {
                "mode": self.tta,
                **({"without": self.without_tta.to_dict()} if self.without_tta else {}),
            },
        }

    def __str__(self) -> str:
        rows = [(name, r, _paper(name)) for name, r in self.results.items()]
        if self.without_tta is not None:  # the same engine on the crop alone
            rows.append((f"{self.main}, no {self.tta}", self.without_tta, _paper(self.main)))
        width = max(10, *(len(name) + 2 for name, _, _ in rows))
        lines = [
            f"AFLW2000: {self.num_images} images, engine {self.engine} "
            f"({self.backend}, {self.precision}{_tta_label(self.tta)}), {self.seconds:.1f} s",
            "",
            f"{'model':<{width}}{'yaw':>8}{'pitch':>8}{'roll':>8}{'MAE':>8}   paper MAE",
        ]
        for name, r, paper in rows:
            ref = f"{paper.mae:.2f}" if paper else "-"
            lines.append(
                f"{name:<{width}}{r.yaw:>8.2f}{r.pitch:>8.2f}{r.roll:>8.2f}{r.mae:>8.2f}   {ref:>9}"
            )
        main = self.results[self.main]
        lines += [
            _RULE,
            f" MAE = {main.mae:.2f}, [yaw,pitch,roll] = "
            f"[{main.yaw:.2f}, {main.pitch:.2f}, {main.roll:.2f}]",
            _RULE,
        ]
        return "\n".join(lines)


def evaluate(
    engine: PoseEngine, data: Aflw2000, num: int | None = None, batch: int = EVAL_BATCH
) -> EvalReport:
    """Run `engine` over the evaluation images (the first `num` of them) and score it."""
    if batch < 1:
        raise FsanetError(f"batch must be at least 1, got {batch}")
    if num is not None and not 1 <= num <= len(data):
        raise FsanetError(f"--num must be between 1 and {len(data)}, got {num}")
    images, labels = data.images[:num], data.poses[:num]
    outputs: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    with progress.bar(total=len(images), desc="eval", unit="img") as bar:
        for i in range(0, len(images), batch):
            for name, out in engine.predict_variants(images[i : i + batch]).items():
                outputs.setdefault(name, []).append(out)
            bar.update(min(batch, len(images) - i))
    seconds = time.perf_counter() - start
    # The paper's order: capsule, var, noS, then the fusion. TTA views are left out, except
    # the headline's crop view: the same engine without TTA, shown next to it.
    rank = {name: i for i, name in enumerate([*VARIANTS, FUSION])}
    order = sorted((n for n in outputs if not is_view(n)), key=lambda n: rank.get(n, len(rank)))
    results = {name: AxisErrors.between(np.concatenate(outputs[name]), labels) for name in order}
    main = FUSION if FUSION in results else order[0]
    crop = outputs.get(view_name(main, "crop"))
    return EvalReport(
        len(images),
        results,
        engine.name,
        engine.backend,
        engine.precision,
        seconds,
        engine.tta,
        AxisErrors.between(np.concatenate(crop), labels) if crop else None,
    )


def _tta_label(tta: str) -> str:
    return "" if tta == NONE else f", {tta} TTA"

"""fsanet: FSA-Net head pose as fast, verified inference engines.

The public API, imported when first used (`import fsanet` alone loads no runtime).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "VARIANTS": "fsanet.assets.zoo",
    "AccuracyMatrix": "fsanet.measure.matrix",
    "Aflw2000": "fsanet.assets.aflw2000",
    "Artifact": "fsanet.engine.artifact",
    "AxisErrors": "fsanet.measure.evaluate",
    "BenchReport": "fsanet.measure.bench.report",
    "BuildOptions": "fsanet.convert.options",
    "EndToEndReport": "fsanet.measure.endtoend",
    "EvalReport": "fsanet.measure.evaluate",
    "Face": "fsanet.faces.face",
    "FsanetError": "fsanet.core.errors",
    "HeadPoseEstimator": "fsanet.api",
    "PoseEngine": "fsanet.engine.pose",
    "accuracy_matrix": "fsanet.measure.matrix",
    "benchmark": "fsanet.api",
    "build": "fsanet.api",
    "evaluate": "fsanet.measure.evaluate",
    "evaluate_aflw2000": "fsanet.api",
    "evaluate_end_to_end": "fsanet.measure.endtoend",
    "fetch": "fsanet.assets.fetch",
    "load": "fsanet.api",
    "load_aflw2000": "fsanet.assets.aflw2000",
    "prepare_aflw2000": "fsanet.assets.aflw2000",
}

__all__ = [  # noqa: RUF022 (the version first, then the names, sorted)
    "__version__",
    "VARIANTS",
    "AccuracyMatrix",
    "Aflw2000",
    "Artifact",
    "AxisErrors",
    "BenchReport",
    "BuildOptions",
    "EndToEndReport",
    "EvalReport",
    "Face",
    "FsanetError",
    "HeadPoseEstimator",
    "PoseEngine",
    "accuracy_matrix",
    "benchmark",
    "build",
    "evaluate",
    "evaluate_aflw2000",
    "evaluate_end_to_end",
    "fetch",
    "load",
    "load_aflw2000",
    "prepare_aflw2000",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fsanet' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once is enough
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs; never run
    from fsanet.api import HeadPoseEstimator, benchmark, build, evaluate_aflw2000, load
    from fsanet.assets.aflw2000 import Aflw2000, load_aflw2000, prepare_aflw2000
    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import VARIANTS
    from fsanet.convert.options import BuildOptions
    from fsanet.core.errors import FsanetError
    from fsanet.engine.artifact import Artifact
    from fsanet.engine.pose import PoseEngine
    from fsanet.faces.face import Face
    from fsanet.measure.bench.report import BenchReport
    from fsanet.measure.endtoend import EndToEndReport
    from fsanet.measure.evaluate import AxisErrors, EvalReport, evaluate
    from fsanet.measure.matrix import AccuracyMatrix, accuracy_matrix

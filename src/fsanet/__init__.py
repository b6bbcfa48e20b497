"""fsanet: FSA-Net head pose as fast, verified inference engines."""

from fsanet.api import evaluate_aflw2000, load
from fsanet.artifact import Artifact
from fsanet.build import BuildOptions, build
from fsanet.datasets import Aflw2000, load_aflw2000, prepare_aflw2000
from fsanet.engine import PoseEngine
from fsanet.errors import FsanetError
from fsanet.evaluate import AxisErrors, EvalReport, evaluate
from fsanet.fetch import fetch
from fsanet.zoo import VARIANTS

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "Aflw2000",
    "Artifact",
    "AxisErrors",
    "BuildOptions",
    "EvalReport",
    "FsanetError",
    "PoseEngine",
    "__version__",
    "build",
    "evaluate",
    "evaluate_aflw2000",
    "fetch",
    "load",
    "load_aflw2000",
    "prepare_aflw2000",
]

"""fsanet: FSA-Net head pose as fast, verified inference engines."""

from fsanet.api import evaluate_aflw2000, load
from fsanet.artifact import Artifact
from fsanet.bench import BenchReport, benchmark
from fsanet.build import BuildOptions, build
from fsanet.datasets import Aflw2000, load_aflw2000, prepare_aflw2000
from fsanet.endtoend import EndToEndReport, evaluate_end_to_end
from fsanet.engine import PoseEngine
from fsanet.errors import FsanetError
from fsanet.evaluate import AxisErrors, EvalReport, evaluate
from fsanet.fetch import fetch
from fsanet.matrix import AccuracyMatrix, accuracy_matrix
from fsanet.predict import Face, HeadPoseEstimator
from fsanet.zoo import VARIANTS

__version__ = "0.1.0"

__all__ = [
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
    "__version__",
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

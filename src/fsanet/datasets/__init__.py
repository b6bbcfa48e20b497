"""Datasets: the AFLW2000 test set as FSA-Net prepares it, and input feeds."""

from fsanet.datasets.aflw2000 import (
    EVAL_ANGLE_LIMIT,
    Aflw2000,
    build_aflw2000,
    load_aflw2000,
    prepare_aflw2000,
)

__all__ = ["EVAL_ANGLE_LIMIT", "Aflw2000", "build_aflw2000", "load_aflw2000", "prepare_aflw2000"]

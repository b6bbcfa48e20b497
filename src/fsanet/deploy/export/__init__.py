"""Engines in other servers' formats: `fsanet export triton OUT` (a Triton model repository).

Checking what is written needs the `export` extra (tritonclient, for Triton's ModelConfig);
without it, exporting is a one-line error naming the extra.
"""

from fsanet.deploy.export.batching import BatchPolicy, CurvePoint, policy_from_curve
from fsanet.deploy.export.check import ConfigCheck, check_model_dir
from fsanet.deploy.export.triton import TritonExport, TritonOptions, export_triton

__all__ = [
    "BatchPolicy",
    "ConfigCheck",
    "CurvePoint",
    "TritonExport",
    "TritonOptions",
    "check_model_dir",
    "export_triton",
    "policy_from_curve",
]

"""Engines that fit the machine: `--precision auto` measures the candidates here."""

from fsanet.measure.tune.tuner import Candidate, TuningReport, tune

__all__ = ["Candidate", "TuningReport", "tune"]

"""Faces across video frames: track ids (an IoU + motion rule) and One Euro smoothing."""

from fsanet.tracking.faces import FaceTracks
from fsanet.tracking.one_euro import OneEuro, OneEuroFilter
from fsanet.tracking.tracker import IouTracker

__all__ = ["FaceTracks", "IouTracker", "OneEuro", "OneEuroFilter"]

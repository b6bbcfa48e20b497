"""Faces across video frames: track ids (an IoU + motion rule) and One Euro smoothing."""

from fsanet.faces.tracking.faces import FaceTracks
from fsanet.faces.tracking.one_euro import OneEuro, OneEuroFilter
from fsanet.faces.tracking.tracker import IouTracker

__all__ = ["FaceTracks", "IouTracker", "OneEuro", "OneEuroFilter"]

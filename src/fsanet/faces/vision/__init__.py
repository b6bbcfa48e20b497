"""Faces in real images: detection, FSA-Net crops, drawing."""

from fsanet.faces.options import CROP_RULES
from fsanet.faces.vision.crop import crop_faces, landmark_box
from fsanet.faces.vision.detect import Detection, Detector, YuNet
from fsanet.faces.vision.draw import draw_axis, draw_face

__all__ = [
    "CROP_RULES",
    "Detection",
    "Detector",
    "YuNet",
    "crop_faces",
    "draw_axis",
    "draw_face",
    "landmark_box",
]

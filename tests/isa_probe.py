"""Run under `qemu-x86_64 -cpu Haswell` by tests/test_isa.py: what an AVX2-only CPU sees.

argv[1] is a JSON object: {"engines": {name: artifact dir}, "crops": npy path, "frame": npy
path}. Prints one JSON object: the machine, the CLI's answer to a bf16 build, the note printed
when an engine built elsewhere is loaded, each engine's fused angles on the crops, and YuNet's
faces (box, score, landmarks) in the frame.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np

from fsanet.cli import main
from fsanet.core.machine import this_machine
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine
from fsanet.faces.vision.detect import YuNet


def run() -> dict:
    task = json.loads(sys.argv[1])
    out: dict = {"machine": this_machine().to_dict()}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["build", "--backend", "openvino", "--precision", "bf16", "-q"])
    out["bf16_build"] = {"code": code, "stderr": err.getvalue()}
    crops = np.load(task["crops"])
    out["angles"] = {}
    out["notes"] = {}
    for name, path in task["engines"].items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            engine = PoseEngine.from_artifact(Artifact.load(path), threads=1)
        with engine:
            out["angles"][name] = engine(crops).tolist()
        out["notes"][name] = err.getvalue()
    faces = YuNet(threads=1).detect(np.load(task["frame"]))
    out["faces"] = [[*f.box, f.score, *f.landmarks.ravel()] for f in faces]  # type: ignore[union-attr]
    return out


if __name__ == "__main__":
    print(json.dumps(run()))

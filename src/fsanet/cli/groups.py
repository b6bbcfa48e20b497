"""Argument groups shared by the verbs: each owns one concern's flags, takes its defaults and
choices from the library, and turns the parsed values back into the library's objects."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from fsanet.cli import types

if TYPE_CHECKING:
    from fsanet.engine.pose import PoseEngine
    from fsanet.faces.options import OneEuro, VideoOptions


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default, read from the parser, shown after its help: never retyped."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0  # store_true / store_false: the flag itself says it
        shown = action.default not in (None, argparse.SUPPRESS, (), []) and not flag
        if shown and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


# --- every verb ----------------------------------------------------------------------------


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mirror",
        metavar="DIR",
        help="local mirror searched before downloading (default: $FSANET_MIRROR)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )


def emit(args: argparse.Namespace, data: dict[str, Any], text: str, **print_options: Any) -> None:
    """The verb's result: its readable summary, or one JSON object with --json."""
    print(json.dumps(data, indent=2) if args.json else text, **print_options)


# --- engines --------------------------------------------------------------------------------

# BuildOptions fields set by the engine flags (their `dest`), passed on by name.
ENGINE_FIELDS = (
    "backend", "precision", "tta", "dynamic_batch", "batch_size", "opset", "calibration_method",
    "calibration_size", "optimize", "fuse", "int8_scheme", "layout", "cores", "shapes",
    "tune_batches",
)  # fmt: skip


def _build_default(name: str) -> Any:
    from fsanet.convert.options import BuildOptions

    return {f.name: f.default for f in dataclasses.fields(BuildOptions)}[name]


def add_precision(p: argparse.ArgumentParser) -> None:
    """The engine flags a verb that only runs engines takes: precision, backend, TTA."""
    from fsanet.convert.precision import PRECISIONS
    from fsanet.engine.backends import ENGINE_BACKENDS
    from fsanet.engine.tta import TTA_MODES

    spellings = "; ".join(f"{p.name} ({', '.join(p.aliases)})" for p in PRECISIONS.values())
    p.add_argument(
        "--precision",
        default=_build_default("precision"),
        help=f"where this CPU runs it natively: {spellings}; auto: the fastest engine within "
        "its accuracy bound, measured here",
    )
    p.add_argument(
        "--backend", default=_build_default("backend"), help=" or ".join(ENGINE_BACKENDS)
    )
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=_build_default("tta"),
        help="flip: average each crop with its mirror image inside the engine (one call, "
        "2x the network's work; AFLW2000 MAE 5.07 -> 4.97)",
    )


def add_engine(p: argparse.ArgumentParser, models_help: str) -> None:
    """Model names and every engine option (`BuildOptions`)."""
    from fsanet.convert.layout import LAYOUTS
    from fsanet.convert.precision import CALIBRATION_METHODS, INT8_SCHEMES, OPENVINO_INT8_PRESETS
    from fsanet.engine.backends.base import CORE_MODES, SHAPE_MODES

    p.add_argument("models", nargs="*", metavar="MODEL", help=models_help)
    add_precision(p)
    p.add_argument(
        "--shape-mutable",
        dest="dynamic_batch",
        type=types.boolean,
        default=_build_default("dynamic_batch"),
        metavar="BOOL",
        help="true: any batch size; false: a fixed --batch-size",
    )
    p.add_argument(
        "--batch-size",
        type=types.positive,
        default=_build_default("batch_size"),
        help="the engine's batch size when --shape-mutable false",
    )
    p.add_argument(
        "--opset", type=types.positive, default=_build_default("opset"), help=argparse.SUPPRESS
    )
    p.add_argument(
        "--calibration-method",
        default=_build_default("calibration_method"),
        help=f"int8 calibration: {', '.join(CALIBRATION_METHODS)}",
    )
    p.add_argument(
        "--calibration-size",
        type=types.count,
        default=_build_default("calibration_size"),
        help="calibration images, a fixed subset of AFLW2000 (fp16 and int8)",
    )
    p.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="skip the graph passes (keep tf2onnx's graph with the capsule Loop)",
    )
    p.add_argument(
        "--no-fuse",
        dest="fuse",
        action="store_false",
        help="one model per variant instead of one fused graph",
    )
    p.add_argument(
        "--int8-scheme",
        default=_build_default("int8_scheme"),
        help="int8 settings: cpu (this CPU's, tried in order and measured); onnxruntime: "
        f"{', '.join(INT8_SCHEMES)}; openvino: {', '.join(OPENVINO_INT8_PRESETS)}",
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=_build_default("layout"),
        help="stacked: dense stem and the variants' backbones side by side",
    )
    p.add_argument(
        "--cores",
        choices=CORE_MODES,
        default=_build_default("cores"),
        help="split: one part of a batch per core; shared: one call on every core",
    )
    p.add_argument(
        "--shapes",
        choices=SHAPE_MODES,
        default=_build_default("shapes"),
        help="openvino: a model per padded batch size (fixed), or one for all (dynamic)",
    )


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine flags given to this verb, as `BuildOptions.create`'s keyword arguments."""
    values = vars(args)
    return {f: values[f] for f in ENGINE_FIELDS if values.get(f) is not None}


def build_options(args: argparse.Namespace) -> Any:
    from fsanet.convert.options import BuildOptions

    return BuildOptions.create(args.models or None, **engine_options(args))


def add_engine_dir(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--engine", metavar="DIR", help=f"an engine artifact directory to {what}")


def add_threads(p: argparse.ArgumentParser, help: str = "cores to use") -> None:
    p.add_argument("--threads", type=types.positive, help=f"{help} (default: all available)")


def one_model(args: argparse.Namespace, what: str) -> str:
    """The engine directory or the one model name a verb runs (default: fusion)."""
    from fsanet.core.errors import FsanetError

    if len(args.models) > 1:
        raise FsanetError(f"{what} one model at a time: fusion, a variant, or --engine DIR")
    return args.engine or (args.models[0] if args.models else "fusion")


def open_engine(args: argparse.Namespace, what: str = "evaluate") -> PoseEngine:
    from fsanet.api import load

    model = one_model(args, what)
    return load(model, threads=args.threads, mirror=args.mirror, **engine_options(args))


# --- faces and video ---------------------------------------------------------------------


def add_faces(p: argparse.ArgumentParser, threshold_help: str) -> None:
    from fsanet.faces.options import CROP_RULES, DEFAULT_RULE

    p.add_argument("--crop", choices=CROP_RULES, default=DEFAULT_RULE, help="crop rule")
    p.add_argument(
        "--normalize", action="store_true", help="min-max stretch each crop (FSA-Net's demo)"
    )
    p.add_argument(
        "--score-threshold",
        type=types.fraction,
        help=f"face detector threshold (default: {threshold_help})",
    )


def add_video(p: argparse.ArgumentParser) -> None:
    from fsanet.faces.options import MIN_DETECT_SIZE, VideoOptions

    default = VideoOptions()
    p.add_argument(
        "--detect-every",
        type=types.positive,
        default=default.detect_every,
        metavar="K",
        help="video: detect on every K-th frame, the tracker carrying the boxes between",
    )
    p.add_argument(
        "--detect-size",
        type=types.number(int, MIN_DETECT_SIZE),
        metavar="N",
        help="video: detect on the frame scaled to N pixels on its long side (default: full "
        "size)",
    )
    p.add_argument(
        "--scene-cut",
        type=types.number(float, 0.0, 255.0),
        default=default.cut_threshold,
        metavar="LEVELS",
        help="video: a frame whose thumbnail differs from the last by more than LEVELS grey "
        "levels starts a new scene: tracks end, faces are detected again (0: off)",
    )


def video_options(args: argparse.Namespace) -> VideoOptions:
    from fsanet.faces.options import VideoOptions

    return VideoOptions(
        detect_every=args.detect_every,
        detect_size=args.detect_size,
        cut_threshold=args.scene_cut or None,  # 0: off
    )


def add_smoothing(p: argparse.ArgumentParser) -> None:
    from fsanet.faces.options import OneEuro

    default = OneEuro()
    p.add_argument(
        "--smooth",
        action="store_true",
        help="video: One Euro filter per track on the angles; records keep the raw ones too",
    )
    p.add_argument(
        "--smooth-min-cutoff",
        type=types.positive_float,
        default=default.min_cutoff,
        metavar="HZ",
        help="--smooth: cutoff on a still head, lower is smoother",
    )
    p.add_argument(
        "--smooth-beta",
        type=types.non_negative_float,
        default=default.beta,
        help="--smooth: how fast the cutoff opens in a turn, per degree/s",
    )


def smoothing(args: argparse.Namespace) -> OneEuro | None:
    from fsanet.faces.options import OneEuro

    return OneEuro(args.smooth_min_cutoff, args.smooth_beta) if args.smooth else None


# --- Ray -------------------------------------------------------------------------------------


def add_ray(p: argparse.ArgumentParser, ray_help: str, address_help: str) -> None:
    p.add_argument("--ray", action="store_true", help=ray_help)
    p.add_argument("--address", metavar="HOST:PORT", help=address_help)

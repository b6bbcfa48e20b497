"""`fsanet export triton`: an engine as a Triton model repository, its config checked
offline, its batching set from the engine's measured batch curve."""

from __future__ import annotations

import argparse

from fsanet.cli import groups, types
from fsanet.core.errors import FsanetError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.assets.zoo import FUSION, VARIANTS
    from fsanet.deploy.export.triton import TritonOptions

    default = TritonOptions()
    p.add_argument("format", choices=("triton",), help="triton: a Triton model repository")
    p.add_argument("out", metavar="OUT", help="the model repository folder (created)")
    groups.add_engine(p, f"{FUSION} (default), {', '.join(VARIANTS)}")
    groups.add_engine_dir(p, "export")
    p.add_argument("--name", help="the Triton model name (default: fsanet_<model>)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="KIND_GPU instances with ONNX Runtime's TensorRT accelerator (NVIDIA)",
    )
    p.add_argument("--fp16", action="store_true", help="with --gpu: TensorRT in fp16")
    p.add_argument(
        "--instances", type=types.positive, default=default.instances, help="model instances"
    )
    p.add_argument(
        "--max-batch",
        type=types.positive,
        default=default.max_batch,
        help="max_batch_size: the most crops per request and per batch",
    )
    p.add_argument(
        "--no-measure",
        dest="measure",
        action="store_false",
        help="skip measuring the batch curve; batch as `fsanet serve` does",
    )
    p.add_argument(
        "--measure-seconds",
        type=types.positive_float,
        default=default.measure_seconds,
        metavar="SECONDS",
        help="time per batch size when measuring the batch curve",
    )


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from fsanet.deploy.export import TritonOptions, export_triton
    from fsanet.deploy.export.triton import check_options
    from fsanet.engine.artifact import Artifact

    options = TritonOptions(
        name=args.name,
        gpu=args.gpu,
        fp16=args.fp16,
        instances=args.instances,
        max_batch=args.max_batch,
        measure=args.measure,
        measure_seconds=args.measure_seconds,
    )
    check_options(Path(args.out), options)  # before an engine is built: minutes, maybe
    if args.engine:
        if args.models:
            raise FsanetError("give a model name or --engine DIR, not both")
        artifact = Artifact.load(args.engine)
    else:
        from fsanet.api import build

        if len(args.models) > 1:
            raise FsanetError("export one model at a time: fusion, a variant, or --engine DIR")
        artifact = build(groups.build_options(args), args.mirror)
    export = export_triton(artifact, args.out, options)
    groups.emit(args, export.to_dict(), str(export))

"""The `fsanet` command: one subcommand, one API call, a readable summary or JSON."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from fsanet import __version__
from fsanet.core import progress
from fsanet.core.errors import FsanetError

if TYPE_CHECKING:  # the CLI imports heavy modules only inside the command that needs them
    from fsanet.convert.options import BuildOptions
    from fsanet.engine.artifact import Artifact
    from fsanet.engine.pose import PoseEngine
    from fsanet.faces.video import VideoOptions


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _number(
    kind: type[int] | type[float] = float,
    least: float = 0.0,
    most: float = math.inf,
    *,
    above: bool = False,
) -> Callable[[str], Any]:
    """The argparse type of every numeric option: a finite `kind` in [least, most], or in
    (least, most] with `above`; nan, inf and out-of-range values are refused as usage errors."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"expected a {noun}, got '{text}'") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
        if above and value <= least:
            raise argparse.ArgumentTypeError(f"must be more than {least:g}, got {value:g}")
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least:g}, got {value:g}")
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g}, got {value:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


_positive = _number(int, 1)  # counts and sizes
_count = _number(int, 0)  # counts that may be zero
_positive_float = _number(float, 0.0, above=True)  # durations, timeouts, sizes in MB
_non_negative_float = _number(float, 0.0)  # waits that may be zero
_fraction = _number(float, 0.0, 1.0)  # detector score thresholds
_port = _number(int, 0, 65535)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# --- subcommands -------------------------------------------------------------------------


def cmd_fetch(args: argparse.Namespace) -> None:
    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import resolve_files

    paths = {f.name: str(fetch(f, args.mirror)) for f in resolve_files(args.names)}
    _emit(args, {"files": paths}, "\n".join(f"{n:<36} {p}" for n, p in paths.items()))


def cmd_dataset(args: argparse.Namespace) -> None:
    from fsanet.assets.aflw2000 import load_aflw2000, prepare_aflw2000

    path = prepare_aflw2000(args.source, args.mirror, args.output)
    data = load_aflw2000(path)
    evaluated = len(data.evaluation_subset())
    _emit(
        args,
        {"path": str(path), "num_images": len(data), "num_evaluated": evaluated},
        f"{path}: {len(data)} crops of 64x64, {evaluated} within ±99° (evaluated)",
    )


def _build_options(args: argparse.Namespace) -> BuildOptions:
    from fsanet.convert.options import BuildOptions

    return BuildOptions.create(args.models or None, **_option_values(args))


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options of `_add_engine_options`, as BuildOptions.create's arguments."""
    values = {
        "backend": args.backend,
        "precision": args.precision,
        "dynamic_batch": args.shape_mutable,
        "batch_size": args.batch_size,
        "opset": args.opset,
        "optimize": args.optimize,
        "fuse": args.fuse,
        "calibration_method": args.calibration_method,
        "calibration_size": args.calibration_size,
        "layout": args.layout,
        "cores": args.cores,
        "shapes": args.shapes,
        "int8_scheme": args.int8_scheme,
        "tta": args.tta,
    }
    if getattr(args, "tune_batches", None):
        values["tune_batches"] = args.tune_batches
    return values


def _describe(artifact: Artifact) -> str:
    m = artifact.manifest
    batch = "dynamic batch" if m.batch_mode == "dynamic" else f"fixed batch {m.batch_size}"
    parity = m.parity
    runtime = ", ".join(f"{k} {v}" for k, v in m.runtime.items())
    lines = [
        f"engine {artifact.path}",
        f"  variants {', '.join(m.variants)}; {m.backend}, {m.precision}, {batch}, "
        f"opset {m.opset}; passes: {', '.join(m.extra.get('passes', [])) or 'none'}; {runtime}",
        f"  built and checked on {m.machine.get('model', '?')} ({m.machine.get('isa_class', '?')})",
        f"  runs: {m.executed.get('device', '?')}; {m.executed.get('status', '?')}",
        f"  parity with TensorFlow: max |diff| {parity['max_abs_diff_deg']:.1e}° over "
        f"{parity['num_inputs']} inputs ({parity['num_real']} AFLW2000 crops, "
        f"{parity['num_random']} random); {parity.get('status', '?')}",
    ]
    if accuracy := m.extra.get("accuracy"):
        held_out = (
            f"; held-out {accuracy['mae_held_out']:.3f}° on {accuracy['num_held_out']} images"
            if "calibration" in m.extra
            else ""
        )
        lines.append(
            f"  AFLW2000 fusion MAE {accuracy['mae']:.3f}° vs "
            f"{accuracy['mae_fp32_tensorflow']:.3f}° for fp32 TensorFlow; "
            f"{accuracy['status']}{held_out}"
        )
    if tta := m.extra.get("tta"):
        lines.append(
            f"  {tta['mode']} TTA: fusion MAE {tta['mae']:.3f}° with it, {tta['mae_without']:.3f}° "
            "without (the crop view); TensorFlow above ran with it too"
        )
    if int8 := m.extra.get("int8"):
        tried = ", ".join(f"{t['scheme']} {t['delta']:+.3f}°" for t in int8["tried"])
        lines.append(f"  int8 setting {int8['scheme']} (tried on this CPU: {tried})")
    if tuning := m.extra.get("tuning"):
        from fsanet.measure.tune import TuningReport

        lines += ["", str(TuningReport.from_dict(tuning))]
    return "\n".join(lines)


def cmd_build(args: argparse.Namespace) -> None:
    from fsanet.api import build

    artifact = build(_build_options(args), args.mirror, force=args.force)
    _emit(args, {"path": str(artifact.path), **artifact.manifest.to_dict()}, _describe(artifact))


def _engine(args: argparse.Namespace) -> PoseEngine:
    from fsanet.api import load

    model = args.engine or (args.models[0] if len(args.models) == 1 else "fusion")
    if len(args.models) > 1:
        raise FsanetError("evaluate one model at a time: fusion, a variant, or --engine PATH")
    return load(model, threads=args.threads, mirror=args.mirror, **_option_values(args))


def cmd_eval(args: argparse.Namespace) -> None:
    from fsanet.api import evaluate_aflw2000

    if getattr(args, "end_to_end", False):
        return _eval_end_to_end(args)
    with _engine(args) as engine:
        report = evaluate_aflw2000(engine, args.dataset, args.num, args.batch, args.mirror)
    _emit(args, report.to_dict(), str(report))


def _eval_end_to_end(args: argparse.Namespace) -> None:
    from fsanet.faces.estimator import HeadPoseEstimator
    from fsanet.measure.endtoend import E2E_SCORE_THRESHOLD, evaluate_end_to_end

    if args.dataset and str(args.dataset).endswith(".npz"):
        raise FsanetError("--end-to-end needs the raw photos: the AFLW2000-3D zip or folder")
    threshold = E2E_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    with HeadPoseEstimator(
        _engine(args),
        crop=args.crop,
        normalize=args.normalize,
        score_threshold=threshold,
        mirror=args.mirror,
    ) as estimator:
        report = evaluate_end_to_end(estimator, args.dataset, args.num, args.mirror)
    _emit(args, report.to_dict(), str(report))


def _check_outputs(paths: list[str], output: str | None, jsonl: str | None, ray: bool) -> None:
    """Fail on an output path that cannot be written now, or that would replace an input,
    before loading (or building) the engine and reading the inputs."""
    from pathlib import Path

    from fsanet.core.files import ensure_dir
    from fsanet.faces.predict import check_outputs

    if output is not None:
        ensure_dir(Path(output))
    if jsonl not in (None, "-"):
        path = Path(jsonl)  # type: ignore[arg-type]
        if path.is_dir():
            raise FsanetError(f"cannot write {path}: it is a folder; give a file name")
        if not path.exists():
            ensure_dir(path.parent, path)
    if ray:  # URIs are not this machine's files: predict_on_ray checks file:// ones
        from fsanet.deploy.cluster.batch_sources import is_uri

        paths = [p for p in paths if not is_uri(p)]
    check_outputs(paths, output, [jsonl] if jsonl is not None else [])


def cmd_predict(args: argparse.Namespace) -> None:
    from fsanet.api import load
    from fsanet.faces.estimator import HeadPoseEstimator
    from fsanet.faces.predict import jsonl_writer, predict
    from fsanet.faces.tracking import OneEuro

    if not args.ray and (args.address or args.format != "jsonl"):
        raise FsanetError("--address and --format parquet go with --ray")
    # JSON Lines go to stdout unless written elsewhere; the summary then goes to stderr.
    jsonl = args.jsonl or (None if args.output else "-")
    if args.ray:
        from fsanet.deploy.cluster.batch import check_ray

        if args.output:
            raise FsanetError("--ray writes records only: give --jsonl FILE, not --output")
        if args.address and args.threads:
            raise FsanetError("--threads sizes a local cluster: with --address, its CPUs count")
        if args.format == "parquet" and jsonl == "-":
            raise FsanetError("--format parquet writes a file: give --jsonl FILE.parquet")
        check_ray()  # before the engine: without Ray, one line at once
    _check_outputs(args.paths, args.output, jsonl, args.ray)
    video = _video_options(args)
    smooth = OneEuro(args.smooth_min_cutoff, args.smooth_beta) if args.smooth else None
    engine = load(
        args.engine or args.model,
        threads=1 if args.ray else args.threads,  # with --ray, only found (or built) here
        mirror=args.mirror,
        **(
            {"tta": args.tta}
            if args.engine
            else {"backend": args.backend, "precision": args.precision, "tta": args.tta}
        ),
    )
    if args.ray:  # the workers load the engine's files, sent through Ray's object store
        from fsanet.deploy.cluster.batch import BatchOptions, WorkerOptions, predict_on_ray

        artifact = engine.artifact
        engine.close()
        assert artifact is not None
        worker = WorkerOptions(
            crop=args.crop,
            normalize=args.normalize,
            score_threshold=0.5 if args.score_threshold is None else args.score_threshold,
            max_faces=args.max_faces,
            max_pixels=args.max_pixels,
            max_frames=args.frames,
            rotation=args.rotation,
            smooth=smooth,
            video=video,
        )
        options = BatchOptions(args.address, cpus=args.threads, worker=worker)
        summary = predict_on_ray(
            args.paths, artifact, options, jsonl=jsonl, fmt=args.format, mirror=args.mirror
        )
        text = json.dumps(summary.to_dict(), indent=2) if args.json else str(summary)
        print(text, file=sys.stderr if jsonl == "-" else sys.stdout)
        return
    with (
        HeadPoseEstimator(
            engine,
            crop=args.crop,
            normalize=args.normalize,
            score_threshold=0.5 if args.score_threshold is None else args.score_threshold,
            max_faces=args.max_faces,
            mirror=args.mirror,
        ) as estimator,
        jsonl_writer(jsonl) as records,
    ):
        summary = predict(
            args.paths,
            estimator,
            output_dir=args.output,
            jsonl=records,
            max_frames=args.frames,
            max_pixels=args.max_pixels,
            rotation=args.rotation,
            smooth=smooth,
            video=video,
        )
    text = json.dumps(summary.to_dict(), indent=2) if args.json else str(summary)
    print(text, file=sys.stderr if jsonl == "-" else sys.stdout)


def cmd_matrix(args: argparse.Namespace) -> None:
    from fsanet.measure.matrix import accuracy_matrix, write_markdown

    matrix = accuracy_matrix(
        args.backends, args.precisions, args.methods, args.mirror, tta=args.tta
    )
    data, text = matrix.to_dict(), str(matrix)
    if args.output:
        command = "fsanet matrix " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["matrix"] else ""
        data["output"] = str(write_markdown(matrix, args.output, command or "fsanet matrix"))
        text += f"\n\nwritten to {data['output']}"
    _emit(args, data, text)


def cmd_run(args: argparse.Namespace) -> None:
    from fsanet.assets.aflw2000 import prepare_aflw2000
    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import resolve_variants

    for variant in resolve_variants(args.models or None):
        fetch(variant.file, args.mirror)
    if args.dataset is None:
        args.dataset = prepare_aflw2000(None, args.mirror)
    cmd_eval(args)


def cmd_bench(args: argparse.Namespace) -> None:
    from fsanet.api import benchmark
    from fsanet.measure.bench import check_plot_path, parse_batches

    if args.end_to_end:  # whole predict runs on one video (fsanet.measure.bench.stages)
        from fsanet.api import load
        from fsanet.faces.estimator import HeadPoseEstimator
        from fsanet.measure.bench.stages import bench_end_to_end

        if len(args.models) > 1:
            raise FsanetError("--end-to-end runs one model: fusion, a variant or an engine")
        options = _video_options(args)
        engine = load(
            args.models[0] if args.models else "fusion",
            threads=args.threads,
            mirror=args.mirror,
            **_option_values(args),
        )
        with HeadPoseEstimator(engine, mirror=args.mirror) as estimator:
            e2e = bench_end_to_end(
                args.end_to_end,
                estimator,
                [options] if options.real_time else [],
                max_frames=args.frames,
                ablate=args.ablate,
                rounds=args.rounds or 1,
            )
        return _emit(args, e2e.to_dict(), str(e2e))
    batches = parse_batches(args.batch)
    if args.plot:
        check_plot_path(args.plot)  # fail now, not after minutes of measuring
    args.tune_batches = batches  # --precision auto tunes at the batch sizes measured
    report = benchmark(
        args.models or ["fusion"],
        batches,
        iterations=args.iterations,
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds or 10,
        threads=args.threads,
        baseline=args.baseline,
        dataset=args.dataset,
        peak=args.peak,
        mirror=args.mirror,
        **_option_values(args),
    )
    data, text = report.to_dict(), str(report)
    if args.plot:
        data["plot"] = str(report.plot(args.plot))
        text += f"\n\nplot: {data['plot']}"
    _emit(args, data, text)


def cmd_serve(args: argparse.Namespace) -> None:
    from fsanet.deploy.serve.app import ServeConfig, check_tls, serve  # one-line error if no extra
    from fsanet.deploy.serve.auth import read_api_key
    from fsanet.deploy.serve.limits import Limits

    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_crops=args.max_crops,
        max_queue=args.max_queue,
        body_timeout_s=args.body_timeout,
        request_timeout_s=args.timeout,
    )
    optional = {
        "max_inflight_mb": args.max_inflight_mb,
        "max_connections": args.max_connections,
    }
    config = ServeConfig(
        args.host,
        args.port,
        args.max_batch,
        args.max_wait_ms,
        limits,
        access_log=args.access_log,
        max_waiting=args.max_waiting,
        header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive,
        max_header_bytes=args.max_header_kb * 1024,
        tls_handshake_timeout_s=args.tls_handshake_timeout,
        forwarded_allow_ips=tuple(args.forwarded_allow_ips),
        api_key=read_api_key(args.api_key_file),
        docs=args.docs,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        **{k: v for k, v in optional.items() if v is not None},  # None: the machine's default
    )
    check_tls(config)  # before the engine loads: a bad certificate fails at once
    if not args.ray and (args.address or args.replicas):
        raise FsanetError("--address and --replicas go with --ray")
    if args.ray:  # before the engine: without Ray, one line at once
        from fsanet.deploy.cluster import FaceOptions, RayOptions, Replicas, serve_on_ray

        options = RayOptions(
            args.address, args.replicas or Replicas(), replica_cpus=float(args.threads or 1)
        )
    engine = _engine(args)
    if args.ray:  # the engine was found (or built) here; the replicas load its files
        artifact = engine.artifact
        engine.close()
        assert artifact is not None
        faces = None if args.no_faces else FaceOptions(score_threshold=args.score_threshold)
        serve_on_ray(artifact, config, options, faces, args.mirror)
        return
    try:
        estimator = None
        if not args.no_faces:
            from fsanet.faces.estimator import HeadPoseEstimator

            estimator = HeadPoseEstimator(
                engine, score_threshold=args.score_threshold, mirror=args.mirror
            )
        serve(engine, config, estimator)
    finally:
        engine.close()


def cmd_loadtest(args: argparse.Namespace) -> None:
    from pathlib import Path

    from fsanet.deploy.serve.loadtest import crop_bodies, run_load

    if args.image:
        image = Path(args.image)
        if not image.is_file():
            raise FsanetError(f"{image} does not exist")
        kind = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
        path, bodies, per = "/v1/pose", [image.read_bytes()], None
    else:
        from fsanet.assets.aflw2000 import load_aflw2000

        crops = load_aflw2000(args.dataset, args.mirror).images
        kind, path, per = "application/x-npy", "/v1/pose/crops", args.crops
        bodies = crop_bodies(crops, per)
    report = run_load(
        args.url.rstrip("/") + path,
        bodies,
        content_type=kind,
        crops_per_request=per,
        concurrency=args.concurrency,
        duration_s=args.duration,
        max_requests=args.requests,
        timeout_s=args.timeout,
        warmup_s=args.warmup,
    )
    _emit(args, report.to_dict(), str(report))


def cmd_export(args: argparse.Namespace) -> None:
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
        artifact = build(_build_options(args), args.mirror)
    export = export_triton(artifact, args.out, options)
    _emit(args, export.to_dict(), str(export))


# --- parser ------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mirror",
        metavar="DIR",
        help="local mirror searched before downloading (default: $FSANET_MIRROR)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )


def _add_engine_options(p: argparse.ArgumentParser, models_help: str) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL", help=models_help)
    _add_precision_options(p)
    p.add_argument(
        "--shape-mutable",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="true: any batch size (default); false: a fixed --batch-size",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=1,
        help="the engine's batch size when --shape-mutable false (default 1)",
    )
    p.add_argument("--opset", type=_positive, default=17, help=argparse.SUPPRESS)
    p.add_argument(
        "--calibration-method",
        default="minmax",
        help="int8 calibration: minmax (default), entropy or percentile",
    )
    p.add_argument(
        "--calibration-size",
        type=_count,
        default=200,
        help="calibration images, a fixed subset of AFLW2000 (default 200; fp16 and int8)",
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
        default="cpu",
        help="int8 settings: cpu (default: this CPU's, tried in order and measured); "
        "onnxruntime: u8s8, u8u8, u8s8-7bit; openvino: performance, mixed",
    )
    p.add_argument(
        "--layout",
        choices=("plain", "stacked"),
        default="plain",
        help="stacked: dense stem and the variants' backbones side by side (default plain)",
    )
    p.add_argument(
        "--cores",
        choices=("split", "shared"),
        default="split",
        help="split: one part of a batch per core; shared: one call on every core (split)",
    )
    p.add_argument(
        "--shapes",
        choices=("fixed", "dynamic"),
        default="fixed",
        help="openvino: a model per padded batch size, or one for all (fixed)",
    )


def _add_precision_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32, fp16, bf16 (openvino) or int8, where this CPU runs it; auto: the fastest "
        "engine within its accuracy bound, measured here; the seed's force_float32, "
        "force_float16 and qint8_mixed_float16 too (default fp32)",
    )
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or openvino")
    p.add_argument(
        "--tta",
        choices=("none", "flip"),
        default="none",
        help="flip: average each crop with its mirror image inside the engine (one call, "
        "2x the network's work; AFLW2000 MAE 5.07 -> 4.97)",
    )


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", metavar="DIR", help="an engine artifact directory to evaluate")
    p.add_argument("--num", type=_positive, help="evaluate the first N images (default: all 1969)")
    p.add_argument("--batch", type=_positive, default=32, help="images per engine call (32)")
    p.add_argument("--threads", type=_positive, help="cores to use (default: all available)")
    p.add_argument(
        "--dataset",
        metavar="PATH",
        help="AFLW2000 npz, or the AFLW2000-3D zip or folder (default: fetched)",
    )


def _args_fetch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="capsule, var, noS, fusion, aflw2000-3d, yunet (default: all)",
    )


def _args_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", metavar="PATH", help="AFLW2000-3D zip or folder (default: the pinned release)"
    )
    p.add_argument("--output", metavar="NPZ", help="where to write (default: the cache)")


def _batches(text: str) -> list[int]:
    from fsanet.measure.bench import parse_batches

    try:
        return parse_batches(text)
    except FsanetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _args_build(p: argparse.ArgumentParser) -> None:
    _add_engine_options(p, "fusion (default), capsule, var or noS")
    p.add_argument(
        "--batch",
        dest="tune_batches",
        type=_batches,
        metavar="SIZES",
        help="--precision auto: batch sizes to time the candidates at (1,32)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if cached")


def _args_eval(p: argparse.ArgumentParser) -> None:
    _add_engine_options(p, "fusion (default), capsule, var or noS")
    _add_eval_options(p)
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="detect -> crop -> pose on the raw AFLW2000 photos (docs/END_TO_END.md)",
    )
    _add_face_options(p, "0.1 with --end-to-end: the best detection of each photo")


def _add_face_options(p: argparse.ArgumentParser, threshold_default: str) -> None:
    # fsanet.faces.vision.crop.CROP_RULES, spelled out so that building the parser imports no cv2
    p.add_argument(
        "--crop", choices=("thirds", "landmarks", "demo"), default="thirds", help="crop rule"
    )
    p.add_argument(
        "--normalize", action="store_true", help="min-max stretch each crop (FSA-Net's demo)"
    )
    p.add_argument(
        "--score-threshold", type=_fraction, help=f"face detector threshold ({threshold_default})"
    )


def _args_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="images, folders, video files, camera index"
    )
    p.add_argument("--output", metavar="DIR", help="write annotated images and videos here")
    p.add_argument(
        "--jsonl",
        metavar="FILE",
        help="one JSON record per face ('-': stdout, the default without --output)",
    )
    p.add_argument("--model", default="fusion", help="fusion (default), capsule, var or noS")
    _add_precision_options(p)
    p.add_argument("--engine", metavar="DIR", help="an engine artifact directory")
    p.add_argument("--threads", type=_positive, help="cores to use (default: all available)")
    p.add_argument("--frames", type=_positive, help="at most N frames per video or camera")
    p.add_argument(
        "--max-pixels",
        type=_positive,
        default=40_000_000,
        help="skip larger images, before decoding PNG and JPEG (40000000, as `serve`)",
    )
    p.add_argument(
        "--max-faces",
        type=_positive,
        default=256,
        help="faces per image, the best scores; more are reported as truncated (256)",
    )
    p.add_argument(
        "--rotation",
        action="store_true",
        help="add each face's 3x3 rotation matrix (docs/CONVENTIONS.md) to its record",
    )
    p.add_argument(
        "--smooth",
        action="store_true",
        help="video: One Euro filter per track on the angles; records keep the raw ones too",
    )
    p.add_argument(
        "--smooth-min-cutoff",
        type=_positive_float,
        default=0.5,
        metavar="HZ",
        help="--smooth: cutoff on a still head, lower is smoother (0.5)",
    )
    p.add_argument(
        "--smooth-beta",
        type=_non_negative_float,
        default=0.02,
        help="--smooth: how fast the cutoff opens in a turn, per degree/s (0.02)",
    )
    _add_detect_options(p)
    _add_face_options(p, "0.5")
    p.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data (the `cluster` extra): files or pyarrow URIs (file://, s3://, "
        "gs://...) over a pool of workers, records in source order (docs/SCALING.md)",
    )
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="--ray: an existing cluster (default: a local one on 127.0.0.1 with --threads "
        "CPUs, one worker each, stopped at the end)",
    )
    p.add_argument(
        "--format",
        choices=("jsonl", "parquet"),
        default="jsonl",
        help="--ray: the --jsonl file as JSON Lines (default) or Parquet, with the same rows",
    )


def _video_options(args: argparse.Namespace) -> VideoOptions:
    from fsanet.faces.video import VideoOptions as Options

    return Options(
        detect_every=args.detect_every,
        detect_size=args.detect_size,
        cut_threshold=args.scene_cut or None,  # 0: off
    )


def _add_detect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detect-every",
        type=_positive,
        default=1,
        metavar="K",
        help="video: detect on every K-th frame, the tracker carrying the boxes between (1)",
    )
    p.add_argument(
        "--detect-size",
        type=_number(int, 64),
        metavar="N",
        help="video: detect on the frame scaled to N pixels on its long side (full size)",
    )
    p.add_argument(
        "--scene-cut",
        type=_number(float, 0.0, 255.0),
        default=20.0,
        metavar="LEVELS",
        help="video: a frame whose thumbnail differs from the last by more than LEVELS grey "
        "levels starts a new scene: tracks end, faces are detected again (20; 0: off)",
    )


def _args_bench(p: argparse.ArgumentParser) -> None:
    _add_engine_options(
        p,
        "fusion (default), capsule, var, noS, an engine directory, or `all` (every variant and "
        "fusion: the seed's perf.sh)",
    )
    p.add_argument("--batch", default="1,16,32", help="batch sizes, comma-separated (1,16,32)")
    work = p.add_mutually_exclusive_group()
    work.add_argument(
        "--iterations", type=_positive, help="timed calls per engine and batch (1000)"
    )
    work.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="or seconds per engine and batch",
    )
    p.add_argument("--warmup", type=_count, default=20, help="untimed calls first (20)")
    p.add_argument("--rounds", type=_positive, help="interleaved rounds (10; --end-to-end: 1)")
    p.add_argument(
        "--threads",
        type=_positive,
        help="cores per engine, baseline included (default: all available)",
    )
    p.add_argument("--baseline", metavar="NAME", help="tensorflow: FSA-Net's own graphs, compared")
    p.add_argument("--plot", metavar="FILE.png", help="throughput and latency plot")
    p.add_argument(
        "--dataset",
        metavar="PATH",
        help="input crops: an AFLW2000 npz or release, or `random` (default: the cached "
        "AFLW2000 set if there, else random)",
    )
    p.add_argument("--no-peak", dest="peak", action="store_false", help="skip the matmul peak")
    p.add_argument(
        "--end-to-end",
        metavar="VIDEO",
        help="whole `fsanet predict` runs on VIDEO, side by side: frames/s, time per stage, "
        "latency; sequential, pipelined, and with --detect-every/--detect-size if given",
    )
    p.add_argument("--frames", type=_positive, help="--end-to-end: the first N frames")
    p.add_argument(
        "--ablate",
        action="store_true",
        help="--end-to-end: the sequential run also with OpenCV's YuNet, each pipelined run "
        "also one frame at a time, with one detection at a time, and with the cores split "
        "between detector and engine (what each piece gives)",
    )
    _add_detect_options(p)


def _limit(
    kind: type[int] | type[float], least: float, name: str, unit: float = 1.0, above: bool = False
) -> Callable[[str], Any]:
    """The argparse type of a `serve` limit: as `_number`, at most the library's maximum for
    the ServeConfig or Limits field `name` (`unit`: the option's unit in the field's, e.g.
    1 MiB for --max-body-mb). The serve modules are imported only when the option is given."""

    def parse(text: str) -> int | float:
        from fsanet.deploy.serve.limits import maximum

        return _number(kind, least, maximum(name) / unit, above=above)(text)

    parse.__name__ = kind.__name__
    return parse


def _args_serve(p: argparse.ArgumentParser) -> None:
    _add_engine_options(p, "fusion (default), capsule, var or noS")
    p.add_argument("--engine", metavar="DIR", help="an engine artifact directory to serve")
    p.add_argument("--threads", type=_positive, help="cores to use (default: all available)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (8000; 0: any free port)")
    p.add_argument(
        "--max-batch",
        type=_limit(int, 1, "max_batch"),
        default=32,
        help="crops per engine call (32)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=_limit(float, 0.0, "max_wait_ms"),
        default=5.0,
        help="how long the first request of a batch waits for others (5)",
    )
    p.add_argument(
        "--max-body-mb",
        type=_limit(float, 0.0, "max_body_bytes", 1024 * 1024, above=True),
        default=16.0,
        help="request body limit (16)",
    )
    p.add_argument(
        "--max-pixels",
        type=_limit(int, 1, "max_pixels"),
        default=40_000_000,
        help="image size limit (40000000)",
    )
    p.add_argument(
        "--max-crops", type=_limit(int, 1, "max_crops"), default=256, help="crops per request (256)"
    )
    p.add_argument(
        "--max-queue",
        type=_limit(int, 1, "max_queue"),
        default=4096,
        help="crops waiting before 503 (4096)",
    )
    p.add_argument(
        "--timeout",
        type=_limit(float, 0.0, "request_timeout_s", above=True),
        default=30.0,
        help="seconds per request (30)",
    )
    p.add_argument(
        "--body-timeout",
        type=_limit(float, 0.0, "body_timeout_s", above=True),
        default=10.0,
        help="seconds to send a body (10)",
    )
    p.add_argument(
        "--score-threshold", type=_fraction, default=0.5, help="face detector threshold (0.5)"
    )
    p.add_argument("--no-faces", action="store_true", help="no face detector: crops only")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--max-inflight-mb",
        type=_limit(float, 0.0, "max_inflight_mb", above=True),
        help="memory for requests in flight; past it they wait or get 503 (default: the "
        "machine's memory / 24, at most 1024)",
    )
    p.add_argument(
        "--max-waiting",
        type=_limit(int, 1, "max_waiting"),
        default=64,
        help="requests waiting for memory (64)",
    )
    p.add_argument(
        "--max-connections",
        type=_limit(int, 1, "max_connections"),
        help="open connections; past it the oldest idle one is closed (default: the open-file "
        "limit - 64, at most 1024)",
    )
    p.add_argument(
        "--header-timeout",
        type=_limit(float, 0.0, "header_timeout_s", above=True),
        default=10.0,
        help="seconds to send headers (10)",
    )
    p.add_argument(
        "--keep-alive",
        type=_limit(float, 0.0, "keep_alive_s", above=True),
        default=5.0,
        help="idle keep-alive seconds (5)",
    )
    p.add_argument(
        "--max-header-kb",
        type=_limit(int, 1, "max_header_bytes", 1024),
        default=64,
        help="request header size limit (64)",
    )
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require this bearer token (401 otherwise; default: $FSANET_API_KEY if set)",
    )
    p.add_argument("--docs", action="store_true", help="serve /docs and /redoc (Swagger UI)")
    p.add_argument(
        "--rate-limit",
        type=_limit(float, 0.0, "rate_limit", above=True),
        metavar="RPS",
        help="requests per second per client address; past it 429 (default: no limit)",
    )
    p.add_argument(
        "--rate-burst",
        type=_limit(int, 1, "rate_burst"),
        metavar="N",
        help="requests a client may send at once under --rate-limit (default: one second's)",
    )
    p.add_argument("--ssl-certfile", metavar="FILE", help="serve HTTPS: the PEM certificate chain")
    p.add_argument(
        "--ssl-keyfile", metavar="FILE", help="its private key (if not in the certificate file)"
    )
    p.add_argument(
        "--tls-handshake-timeout",
        type=_limit(float, 0.0, "tls_handshake_timeout_s", above=True),
        default=5.0,
        help="seconds for a client to finish the TLS handshake (5); until then its socket "
        "counts against --max-connections and is the first closed when they run out",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        type=_csv,
        default=(),
        metavar="ADDR[,ADDR...]",
        help="proxies whose X-Forwarded-For is believed (addresses, networks or *; default: "
        "none, so the rate limit keys on the connection's address)",
    )

    def replicas(text: str) -> Any:
        from fsanet.deploy.cluster.config import Replicas  # no Ray import

        try:
            return Replicas.parse(text)
        except FsanetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument(
        "--ray",
        action="store_true",
        help="run the engine and the face detector as Ray Serve replicas (docs/SCALING.md; "
        "pip install 'fsanet[cluster]'); --threads is then per replica (default 1)",
    )
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="--ray: an existing cluster's address (default: start a local one on 127.0.0.1)",
    )
    p.add_argument(
        "--replicas",
        type=replicas,
        metavar="N|MIN-MAX|auto",
        help="--ray: replicas of the pose and of the detection deployment each (1); MIN-MAX "
        "or auto (1 to the cluster's CPUs): autoscaling on requests in flight",
    )


def _args_loadtest(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", nargs="?", default="http://127.0.0.1:8000", help="a loopback server")
    p.add_argument("--concurrency", type=_positive, default=32, help="concurrent clients (32)")
    p.add_argument("--duration", type=_positive_float, default=30.0, help="seconds measured (30)")
    p.add_argument(
        "--warmup", type=_non_negative_float, default=2.0, help="seconds before measuring (2)"
    )
    p.add_argument("--requests", type=_positive, default=1_000_000, help="at most N requests")
    p.add_argument("--crops", type=_positive, default=1, help="crops per request (1)")
    p.add_argument("--image", metavar="FILE", help="POST this JPEG/PNG to /v1/pose instead")
    p.add_argument("--timeout", type=_positive_float, default=30.0, help="seconds per request (30)")
    p.add_argument("--dataset", metavar="PATH", help="AFLW2000 npz for the crops (cached)")


def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=("triton",), help="triton: a Triton model repository")
    p.add_argument("out", metavar="OUT", help="the model repository folder (created)")
    _add_engine_options(p, "fusion (default), capsule, var or noS")
    p.add_argument("--engine", metavar="DIR", help="an engine artifact directory to export")
    p.add_argument("--name", help="the Triton model name (default: fsanet_<model>)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="KIND_GPU instances with ONNX Runtime's TensorRT accelerator (NVIDIA)",
    )
    p.add_argument("--fp16", action="store_true", help="with --gpu: TensorRT in fp16")
    p.add_argument("--instances", type=_positive, default=1, help="model instances (1)")
    p.add_argument(
        "--max-batch",
        type=_positive,
        default=64,
        help="max_batch_size: the most crops per request and per batch (64)",
    )
    p.add_argument(
        "--no-measure",
        dest="measure",
        action="store_false",
        help="skip measuring the batch curve; batch as `fsanet serve` does (32, 5 ms)",
    )
    p.add_argument(
        "--measure-seconds",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="time per batch size when measuring the batch curve (0.5)",
    )


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _args_matrix(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", type=_csv, help="comma-separated (default: all)")
    p.add_argument("--precisions", type=_csv, help="comma-separated (default: all)")
    p.add_argument(
        "--methods", type=_csv, help="int8 calibration methods, comma-separated (default: all)"
    )
    p.add_argument(
        "--tta",
        choices=("none", "flip"),
        default="none",
        help="flip: every engine also with flip TTA, in the row below it (none)",
    )
    p.add_argument("--output", metavar="FILE.md", help="also write the table as Markdown")


Command = tuple[
    str, str, Callable[[argparse.Namespace], None], Callable[[argparse.ArgumentParser], None]
]

COMMANDS: list[Command] = [
    ("fetch", "download and verify model and data files", cmd_fetch, _args_fetch),
    (
        "dataset",
        "build FSA-Net's 64x64 AFLW2000 set from the official release",
        cmd_dataset,
        _args_dataset,
    ),
    ("build", "convert the TensorFlow graphs into a verified engine", cmd_build, _args_build),
    ("eval", "evaluate an engine on AFLW2000 (MAE per variant and fused)", cmd_eval, _args_eval),
    ("run", "one click: fetch, dataset, build, eval", cmd_run, _args_eval),
    ("matrix", "accuracy of every backend x precision on AFLW2000", cmd_matrix, _args_matrix),
    ("predict", "head pose of every face in images, folders, video", cmd_predict, _args_predict),
    ("bench", "throughput and latency per batch size, vs TensorFlow", cmd_bench, _args_bench),
    ("serve", "HTTP head-pose service with dynamic batching", cmd_serve, _args_serve),
    ("loadtest", "load a local `fsanet serve`: throughput, latency", cmd_loadtest, _args_loadtest),
    ("export", "an engine as a Triton model repository", cmd_export, _args_export),
]


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (exit 2, argparse's code for usage
    errors) instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="fsanet",
        description="FSA-Net head pose: fetch, build verified engines, evaluate on AFLW2000.",
    )
    top.add_argument("--version", action="version", version=f"fsanet {__version__}")
    top.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, func, add_arguments in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        _add_common(p)
        add_arguments(p)
    return top


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as for Ctrl-C: temporary
    files are removed by the `finally` blocks that made them."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


# `serve` stops on SIGTERM itself (uvicorn drains the requests in flight, then exits 0).
_OWN_SIGTERM = frozenset({"serve"})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quiet:
        progress.set_enabled(False)
    previous = None
    if args.command not in _OWN_SIGTERM and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.func(args)
    except FsanetError as e:
        print(f"fsanet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("fsanet: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fsanet bench`: throughput and latency per batch size (interleaved rounds, the TensorFlow
baseline beside), or whole `predict` runs on a video with `--end-to-end`."""

from __future__ import annotations

import argparse

from fsanet.cli import groups, types
from fsanet.core.errors import FsanetError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.assets.zoo import FUSION, VARIANTS
    from fsanet.measure.bench.baseline import BASELINES
    from fsanet.measure.bench.core import (
        ALL,
        DEFAULT_BATCHES,
        DEFAULT_ITERATIONS,
        DEFAULT_ROUNDS,
        DEFAULT_WARMUP,
    )

    groups.add_engine(
        p,
        f"{FUSION} (default), {', '.join(VARIANTS)}, an engine directory, or `{ALL}` (every "
        f"variant and {FUSION}: the seed's perf.sh)",
    )
    p.add_argument(
        "--batch",
        default=",".join(map(str, DEFAULT_BATCHES)),
        metavar="SIZES",
        help="batch sizes, comma-separated",
    )
    work = p.add_mutually_exclusive_group()
    work.add_argument(
        "--iterations",
        type=types.positive,
        help=f"timed calls per engine and batch (default: {DEFAULT_ITERATIONS})",
    )
    work.add_argument(
        "--duration",
        type=types.positive_float,
        metavar="SECONDS",
        help="or seconds per engine and batch",
    )
    p.add_argument("--warmup", type=types.count, default=DEFAULT_WARMUP, help="untimed calls first")
    p.add_argument(
        "--rounds",
        type=types.positive,
        help=f"interleaved rounds (default: {DEFAULT_ROUNDS}; --end-to-end: 1)",
    )
    groups.add_threads(p, "cores per engine, baseline included")
    p.add_argument(
        "--baseline",
        metavar="NAME",
        help=f"{', '.join(BASELINES)}: FSA-Net's own graphs, compared",
    )
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
    p.add_argument("--frames", type=types.positive, help="--end-to-end: the first N frames")
    p.add_argument(
        "--ablate",
        action="store_true",
        help="--end-to-end: the sequential run also with OpenCV's YuNet, each pipelined run "
        "also one frame at a time, with one detection at a time, and with the cores split "
        "between detector and engine (what each piece gives)",
    )
    groups.add_video(p)


def run(args: argparse.Namespace) -> None:
    if args.end_to_end:
        return _end_to_end(args)
    from fsanet.api import benchmark
    from fsanet.measure.bench import check_plot_path, parse_batches
    from fsanet.measure.bench.core import DEFAULT_ROUNDS

    batches = parse_batches(args.batch)
    if args.plot:
        check_plot_path(args.plot)  # fail now, not after minutes of measuring
    # --precision auto tunes at the batch sizes measured.
    options = groups.engine_options(args) | {"tune_batches": batches}
    report = benchmark(
        args.models or ["fusion"],
        batches,
        iterations=args.iterations,
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds or DEFAULT_ROUNDS,
        threads=args.threads,
        baseline=args.baseline,
        dataset=args.dataset,
        peak=args.peak,
        mirror=args.mirror,
        **options,
    )
    data, text = report.to_dict(), str(report)
    if args.plot:
        data["plot"] = str(report.plot(args.plot))
        text += f"\n\nplot: {data['plot']}"
    groups.emit(args, data, text)


def _end_to_end(args: argparse.Namespace) -> None:
    """Whole predict runs on one video (fsanet.measure.bench.stages)."""
    from fsanet.api import load
    from fsanet.faces.estimator import HeadPoseEstimator
    from fsanet.measure.bench.stages import bench_end_to_end

    if len(args.models) > 1:
        raise FsanetError("--end-to-end runs one model: fusion, a variant or an engine")
    options = groups.video_options(args)
    engine = load(
        args.models[0] if args.models else "fusion",
        threads=args.threads,
        mirror=args.mirror,
        **groups.engine_options(args),
    )
    with HeadPoseEstimator(engine, mirror=args.mirror) as estimator:
        report = bench_end_to_end(
            args.end_to_end,
            estimator,
            [options] if options.real_time else [],
            max_frames=args.frames,
            ablate=args.ablate,
            rounds=args.rounds or 1,
        )
    groups.emit(args, report.to_dict(), str(report))

"""`fsanet predict`: faces and head pose in images, folders, videos and cameras, here or on
Ray Data; JSON Lines (or Parquet) records and annotated pictures."""

from __future__ import annotations

import argparse
import sys

from fsanet.cli import groups, types


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.assets.zoo import FUSION, VARIANTS
    from fsanet.faces.options import MAX_FACES, MAX_PIXELS, RECORD_FORMATS, SCORE_THRESHOLD

    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="images, folders, video files, camera index"
    )
    p.add_argument("--output", metavar="DIR", help="write annotated images and videos here")
    p.add_argument(
        "--jsonl",
        metavar="FILE",
        help="one JSON record per face ('-': stdout, the default without --output)",
    )
    p.add_argument("--model", default=FUSION, help=f"{FUSION}, {', '.join(VARIANTS)}")
    groups.add_precision(p)
    groups.add_engine_dir(p, "run")
    groups.add_threads(p)
    p.add_argument("--frames", type=types.positive, help="at most N frames per video or camera")
    p.add_argument(
        "--max-pixels",
        type=types.positive,
        default=MAX_PIXELS,
        help="skip larger images, before decoding PNG and JPEG (as `serve`)",
    )
    p.add_argument(
        "--max-faces",
        type=types.positive,
        default=MAX_FACES,
        help="faces per image, the best scores; more are reported as truncated",
    )
    p.add_argument(
        "--rotation",
        action="store_true",
        help="add each face's 3x3 rotation matrix (docs/CONVENTIONS.md) to its record",
    )
    groups.add_smoothing(p)
    groups.add_video(p)
    groups.add_faces(p, str(SCORE_THRESHOLD))
    groups.add_ray(
        p,
        "run on Ray Data (the `cluster` extra): files or pyarrow URIs (file://, s3://, "
        "gs://...) over a pool of workers, records in source order (docs/SCALING.md)",
        "--ray: an existing cluster (default: a local one on 127.0.0.1 with --threads "
        "CPUs, one worker each, stopped at the end)",
    )
    p.add_argument(
        "--format",
        choices=RECORD_FORMATS,
        default=RECORD_FORMATS[0],
        help="--ray: the --jsonl file as JSON Lines or Parquet, with the same rows",
    )


def run(args: argparse.Namespace) -> None:
    from fsanet.api import predict_files
    from fsanet.deploy.cluster.batch_worker import WorkerOptions
    from fsanet.faces.options import SCORE_THRESHOLD

    # JSON Lines go to stdout unless written elsewhere; the summary then goes to stderr.
    records = args.jsonl or (None if args.output else "-")
    faces = WorkerOptions(
        crop=args.crop,
        normalize=args.normalize,
        score_threshold=SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold,
        max_faces=args.max_faces,
        max_pixels=args.max_pixels,
        max_frames=args.frames,
        rotation=args.rotation,
        smooth=groups.smoothing(args),
        video=groups.video_options(args),
    )
    # An engine directory brings its own backend and precision; --tta is checked against it.
    load = {"tta": args.tta}
    if not args.engine:
        load |= {"backend": args.backend, "precision": args.precision}
    summary = predict_files(
        args.paths,
        faces,
        model=args.engine or args.model,
        output_dir=args.output,
        records=records,
        fmt=args.format,
        threads=args.threads,
        mirror=args.mirror,
        ray=args.ray,
        address=args.address,
        **load,
    )
    groups.emit(
        args, summary.to_dict(), str(summary), file=sys.stderr if records == "-" else sys.stdout
    )

"""`fsanet eval`: MAE per variant and fused on FSA-Net's 1969 AFLW2000 images, or end to end
(detector -> crop -> pose) on the raw photos."""

from __future__ import annotations

import argparse

from fsanet.cli import groups, types
from fsanet.core.errors import FsanetError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.assets.zoo import FUSION, VARIANTS
    from fsanet.faces.options import E2E_SCORE_THRESHOLD, SCORE_THRESHOLD
    from fsanet.measure.defaults import EVAL_BATCH

    groups.add_engine(p, f"{FUSION} (default), {', '.join(VARIANTS)}")
    groups.add_engine_dir(p, "evaluate")
    p.add_argument("--num", type=types.positive, help="evaluate the first N images (default: all)")
    p.add_argument(
        "--batch", type=types.positive, default=EVAL_BATCH, help="images per engine call"
    )
    groups.add_threads(p)
    p.add_argument(
        "--dataset",
        metavar="PATH",
        help="AFLW2000 npz, or the AFLW2000-3D zip or folder (default: fetched)",
    )
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="detect -> crop -> pose on the raw AFLW2000 photos (docs/END_TO_END.md)",
    )
    groups.add_faces(
        p,
        f"{SCORE_THRESHOLD}; {E2E_SCORE_THRESHOLD} with --end-to-end: the best detection of "
        "each photo",
    )


def run(args: argparse.Namespace) -> None:
    evaluate(args, args.dataset)


def evaluate(args: argparse.Namespace, dataset: object) -> None:
    """`eval` on `dataset` (also the last step of `run`)."""
    from fsanet.api import evaluate_aflw2000

    if args.end_to_end:
        return _end_to_end(args, dataset)
    with groups.open_engine(args) as engine:
        report = evaluate_aflw2000(engine, dataset, args.num, args.batch, args.mirror)
    groups.emit(args, report.to_dict(), str(report))


def _end_to_end(args: argparse.Namespace, dataset: object) -> None:
    from fsanet.faces.estimator import HeadPoseEstimator
    from fsanet.faces.options import E2E_SCORE_THRESHOLD
    from fsanet.measure.endtoend import evaluate_end_to_end

    if dataset and str(dataset).endswith(".npz"):
        raise FsanetError("--end-to-end needs the raw photos: the AFLW2000-3D zip or folder")
    threshold = E2E_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    with HeadPoseEstimator(
        groups.open_engine(args),
        crop=args.crop,
        normalize=args.normalize,
        score_threshold=threshold,
        mirror=args.mirror,
    ) as estimator:
        report = evaluate_end_to_end(
            estimator, dataset, args.num, args.mirror  # type: ignore[arg-type]
        )
    groups.emit(args, report.to_dict(), str(report))

"""`fsanet loadtest`: load a local `fsanet serve` with crops or a photo, bounded in time and
requests: throughput, latency percentiles, errors; or with `--stream N`, N WebSocket streams of
a clip's frames at a camera's rate: frames/s per stream, round trips, skipped frames, errors."""

from __future__ import annotations

import argparse
import inspect

from fsanet.cli import groups, types
from fsanet.core.errors import FsanetError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.deploy.serve.loadtest import run_load

    default = {k: v.default for k, v in inspect.signature(run_load).parameters.items()}
    p.add_argument("url", nargs="?", default="http://127.0.0.1:8000", help="a loopback server")
    p.add_argument(
        "--concurrency", type=types.positive, default=default["concurrency"],
        help="concurrent clients",
    )  # fmt: skip
    p.add_argument(
        "--duration", type=types.positive_float, default=default["duration_s"],
        help="seconds measured",
    )  # fmt: skip
    p.add_argument(
        "--warmup", type=types.non_negative_float, default=default["warmup_s"],
        help="seconds before measuring",
    )  # fmt: skip
    p.add_argument(
        "--requests", type=types.positive, default=default["max_requests"],
        help="at most N requests",
    )  # fmt: skip
    p.add_argument(
        "--crops", type=types.positive, default=default["crops_per_request"],
        help="crops per request",
    )  # fmt: skip
    p.add_argument("--image", metavar="FILE", help="POST this JPEG/PNG to /v1/pose instead")
    p.add_argument(
        "--timeout", type=types.positive_float, default=default["timeout_s"],
        help="seconds per request",
    )  # fmt: skip
    p.add_argument("--dataset", metavar="PATH", help="AFLW2000 npz for the crops (cached)")
    p.add_argument(
        "--stream", type=types.positive, metavar="N",
        help="N WebSocket streams (WS /v1/stream) of --video's frames instead",
    )  # fmt: skip
    p.add_argument("--video", metavar="CLIP", help="--stream: the frames to send (looped)")
    p.add_argument(
        "--fps", type=types.number(float, 0, 240, above=True),
        help="--stream: frames per second each stream sends (default: the clip's)",
    )  # fmt: skip
    p.add_argument(
        "--stream-query", default="", metavar="QUERY",
        help="--stream: each stream's options as a query string (detect_every=3&smooth=0)",
    )  # fmt: skip
    p.add_argument(
        "--size", type=_size, metavar="WxH",
        help="--stream: frames letterboxed to this size, as a camera sends them (default: "
        "the clip's)",
    )  # fmt: skip


def _size(text: str) -> tuple[int, int]:
    sides = text.lower().partition("x")[::2]
    if all(v.isdecimal() and 16 <= int(v) <= 8192 for v in sides):
        return int(sides[0]), int(sides[1])
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (16 to 8192 each), got {text!r}")


def _streams(args: argparse.Namespace) -> None:
    from pathlib import Path

    from fsanet.deploy.serve.streamload import clip_fps, clip_frames, run_stream_load

    if not args.video:
        raise FsanetError("--stream needs --video CLIP (the frames to send)")
    if args.image:
        raise FsanetError("--stream sends --video's frames, not --image")
    if not Path(args.video).is_file():
        raise FsanetError(f"{args.video} does not exist")
    report = run_stream_load(
        args.url,
        clip_frames(args.video, args.size),
        clip=Path(args.video).name,
        query=args.stream_query,
        streams=args.stream,
        fps=args.fps or clip_fps(args.video),
        duration_s=args.duration,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
    )
    groups.emit(args, report.to_dict(), str(report))


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    if args.stream:
        _streams(args)
        return
    if args.video or args.fps or args.size or args.stream_query:
        raise FsanetError("--video, --fps, --size and --stream-query go with --stream N")

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
    groups.emit(args, report.to_dict(), str(report))

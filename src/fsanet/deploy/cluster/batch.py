"""`fsanet predict --ray`: `fsanet predict` over large photo and video collections on Ray Data.

Ray Data reads the files (local folders and lists, or URIs that pyarrow's file systems open)
in streaming blocks; an autoscaling pool of actors, as many as the cluster's CPUs allow, each
holding YuNet and the pose engine loaded once (`batch_worker.Poser`), decodes, detects and
poses them: images in batches, each video as one unit (its faces are tracked in frame
order). The records come back to this process, are put back in source order and written as
`fsanet predict` writes them (JSON Lines), or as one Parquet file with the same rows.

The engine is found or built here and sent to the workers through the object store with
YuNet's model (sha256-checked on arrival; a worker never builds), so no node needs a shared
file system. Local files are read on this node, whichever node then works on them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.core.files import refuse_overwrites
from fsanet.deploy.cluster.batch_worker import NOTES, WorkerOptions
from fsanet.deploy.cluster.batch_write import FORMATS, records_writer
from fsanet.engine.artifact import Artifact
from fsanet.engine.backends.base import available_cpus
from fsanet.faces.predict import PredictSummary

if TYPE_CHECKING:
    from fsanet.deploy.cluster.batch_sources import Listing

__all__ = ["BatchOptions", "WorkerOptions", "check_ray", "predict_on_ray"]

IMAGES_PER_BATCH = 16  # per actor call: a call's overhead shared, files still spread evenly
READERS = 4  # read tasks at once: enough to keep the workers fed from disk or a bucket
# How a worker's FsanetError (or a subclass) reads in the traceback text Ray gives back.
_FSANET_ERROR = re.compile(rf"^{re.escape(FsanetError.__module__)}\.\w+: (.+)$", re.MULTILINE)
Rows = Iterable[tuple[int, str, str]]  # (order, JSON Lines, counts as JSON) of some files


@dataclass(frozen=True)
class BatchOptions:
    """Where `fsanet predict --ray` runs: `address` of a cluster (None: a local one on
    127.0.0.1 with `cpus` CPUs, default all, stopped at the end), at most `workers` actors
    (default: as many as the cluster's CPUs allow), each on `worker.threads` CPUs, given
    `images_per_batch` images per call."""

    address: str | None = None
    workers: int | None = None
    cpus: int | None = None
    images_per_batch: int = IMAGES_PER_BATCH
    worker: WorkerOptions = field(default_factory=WorkerOptions)

    def __post_init__(self) -> None:
        for name in ("workers", "cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FsanetError(f"{name} must be at least 1, got {value}")
        if self.images_per_batch < 1 or self.worker.threads < 1:
            raise FsanetError("images per batch and threads per worker must be at least 1")


def check_ray() -> None:
    """Ray Data is importable, or one line saying which extra installs it."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise FsanetError(
            f"fsanet predict --ray needs the '{e.name or 'ray'}' package: "
            "pip install 'fsanet[cluster]'"
        ) from None


def predict_on_ray(
    paths: list[str],
    artifact: Artifact,
    options: BatchOptions | None = None,
    *,
    jsonl: str | Path | None = "-",
    fmt: str = "jsonl",
    mirror: str | None = None,
) -> PredictSummary:
    """Run `fsanet predict` on Ray over `paths` with the engine `artifact`; records go to
    `jsonl` (a file, '-' for stdout, None for nowhere) in `fmt` ("jsonl" or "parquet").

    Raises FsanetError if a path does not exist, if there is no image or video, if no file
    could be read, or if Ray cannot start or be joined; nothing is written then."""
    options = options or BatchOptions()
    if fmt not in FORMATS:
        raise FsanetError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    check_ray()
    from fsanet.deploy.cluster.batch_sources import list_units

    listing = list_units(paths)  # a bad path fails before a cluster starts
    if listing.local and jsonl is not None and str(jsonl) != "-":
        refuse_overwrites((u.path for u in listing.units), [jsonl])
    import ray

    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import YUNET
    from fsanet.deploy.cluster.local import connected

    yunet = fetch(YUNET, mirror)  # the workers get its bytes, never a download of their own
    summary = PredictSummary(sources=len(listing.units))
    start = time.perf_counter()
    # Ray prints its workers' task errors (even those it retries) on stdout, where the
    # records may go: while Ray runs here, Python's stdout is stderr; the records keep the
    # real one, taken before.
    with (
        records_writer(jsonl, fmt, options.worker.rotation) as write,
        contextlib.redirect_stdout(sys.stderr),
        connected(options.address, options.cpus or available_cpus()),
    ):
        _quiet_ray_data()
        ordered = _InOrder(write, summary)
        with progress.bar(total=len(listing.units), desc="files", unit="file") as bar:
            try:
                for rows in _results(listing, artifact, yunet, options):
                    for order, text, counts in rows:
                        ordered.add(order, text, counts)
                        bar.update()
                    seconds = time.perf_counter() - start
                    bar.set_postfix(fps=f"{(summary.images + summary.frames) / seconds:.1f}")
            except ray.exceptions.RayError as e:
                raise _user_error(e) or e from None
        ordered.finish()
        summary.seconds = time.perf_counter() - start
        if len(summary.failed) == summary.sources:  # raised inside: no file is written
            raise FsanetError(f"no input could be read ({summary.sources} tried)")
    return summary


def _user_error(error: Exception) -> FsanetError | None:
    """A worker's FsanetError (a damaged engine, an unreadable model...), as one line; Ray
    gives it as the text of the worker's traceback."""
    found = _FSANET_ERROR.findall(str(error))
    return FsanetError(f"a Ray worker failed: {found[-1]}") if found else None


def _quiet_ray_data() -> None:
    """This process shows one progress bar of its own: no Ray Data bars or per-run log lines
    (they would also mix with JSON Lines on a terminal)."""
    from ray.data import DataContext

    # Ray Data's usage statistics poll the cluster from a thread of this process that
    # outlives `ray.shutdown()`: its next poll would end the process with exit code 1. Off,
    # and nothing reported behind the user's back.
    os.environ["RAY_DATA_USAGE_DISABLED"] = "1"
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... nor its warning, once per process, that its bars are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _results(
    listing: Listing, artifact: Artifact, yunet: Path, options: BatchOptions
) -> Iterator[Rows]:
    """Batches of (order, JSON Lines, counts) as the workers finish them: the images, then
    the videos (a pool of actors each)."""
    import ray
    from ray.data import ActorPoolStrategy

    from fsanet.deploy.cluster.batch_worker import Poser
    from fsanet.deploy.cluster.transfer import pack, pack_artifact

    engine = ray.put(pack_artifact(artifact))
    detector = ray.put(pack(yunet.parent, [yunet.name]))
    units: dict[str, list[tuple[int, str, str]]] = {}
    for u in listing.units:
        units.setdefault(u.path, []).append((u.order, u.kind, u.location))
    units_ref = ray.put(units)
    threads = options.worker.threads
    most = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    worker = options.worker
    # Local files exist on this node only: read here, worked on anywhere. Reading is I/O:
    # it asks for no CPU (the workers have them all), a few files at a time.
    near = {"ray.io/node-id": ray.get_runtime_context().get_node_id()} if listing.local else None
    for kind, per_call in (("image", options.images_per_batch), ("video", 1)):
        files = list({u.path: u for u in listing.of_kind(kind)}.values())  # each read once
        if not files:
            continue
        blocks = len(files) if kind == "video" else -(-len(files) // per_call)
        data = ray.data.read_binary_files(
            [u.path for u in files],
            filesystem=listing.filesystem,
            include_paths=True,
            override_num_blocks=blocks,
            label_selector=near,
            num_cpus=0,
            concurrency=min(READERS, blocks),
        ).map_batches(
            Poser,
            fn_constructor_args=(engine, detector, units_ref, worker),
            batch_size=per_call,
            compute=ActorPoolStrategy(min_size=1, max_size=min(most, len(files))),
            num_cpus=threads,
        )
        for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
            yield zip(batch["order"].tolist(), batch["jsonl"], batch["summary"], strict=True)


class _InOrder:
    """Files' results, written in source order as soon as every earlier file's are in."""

    def __init__(self, write: Callable[[str], None], summary: PredictSummary) -> None:
        self.write, self.summary = write, summary
        self.waiting: dict[int, tuple[str, dict[str, Any]]] = {}
        self.next = 0

    def add(self, order: int, text: str, counts_json: str) -> None:
        self.waiting[order] = (str(text), json.loads(counts_json))
        while self.next in self.waiting:
            text, counts = self.waiting.pop(self.next)
            self.write(text)
            self._count(counts)
            self.next += 1

    def _count(self, counts: dict[str, Any]) -> None:
        summary = self.summary
        summary.images += counts["images"]
        summary.frames += counts["frames"]
        summary.faces += counts["faces"]
        for name in NOTES:
            getattr(summary, name).extend(counts[name])
        # Said as `fsanet predict` says it while it runs (once per file for --max-faces).
        for note in counts["failed"]:
            print(f"fsanet: warning: skipping {note}", file=sys.stderr)
        if counts["truncated"]:
            print(f"fsanet: warning: {counts['truncated'][0]} (--max-faces)", file=sys.stderr)
        for note in counts["incomplete"]:
            print(f"fsanet: warning: {note} (truncated or damaged)", file=sys.stderr)

    def finish(self) -> None:
        if self.waiting or self.next != self.summary.sources:
            raise RuntimeError(  # a bug, not the user's: every file gives one row
                f"predict --ray: {self.summary.sources - self.next} files without a result"
            )

"""What `fsanet predict --ray` reads: local files and folders (as `fsanet predict` lists them)
and URIs that pyarrow's file systems open (`file://`, `s3://`, `gs://`, `hdfs://`...).

Each file is a `Unit`, numbered in the order the single-machine run writes its records: every
image first, then every video, each group in the order of the paths given, a folder's files
sorted by their path inside it. No Ray here: a bad path fails before a cluster starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from urllib.parse import parse_qsl, urlsplit

from pyarrow import ArrowException
from pyarrow import fs as pafs

from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.faces.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, collect_sources

# What a gs:// URI's query may hold: pyarrow's own three, and `anonymous=true` (public
# buckets and emulators: no credentials), which pyarrow's URIs lack.
GCS_PARAMETERS = ("anonymous", "endpoint_override", "retry_limit_seconds", "scheme")
# GCS retries for 15 minutes by default, and missing credentials count as a reason to retry:
# a listing without them would look like a hang. It gets this long unless the URI says.
GCS_LISTING_S = 30.0


@dataclass(frozen=True)
class Unit:
    """One file: `location` names it in the records (the path or URI given, as `fsanet
    predict` names it), `path` is what the file system reads."""

    order: int
    kind: str  # "image" or "video"
    location: str
    path: str


@dataclass(frozen=True)
class Listing:
    """The files of a run, in record order, on one file system."""

    filesystem: pafs.FileSystem
    units: list[Unit]

    @property
    def local(self) -> bool:
        """Files on this machine's disk: read on this node (other nodes may not see them)."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def of_kind(self, kind: str) -> list[Unit]:
        return [u for u in self.units if u.kind == kind]


def is_uri(text: str) -> bool:
    """`scheme://...` (a Windows drive letter `C:\\` is a path, not a scheme)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").isalnum()


def list_units(paths: list[str]) -> Listing:
    """The image and video files under `paths`, in the order of `fsanet predict`'s records.

    Raises FsanetError for a path or URI that does not exist, a camera index, inputs on two
    different file systems, or when there is no image or video at all."""
    files: list[tuple[str, str, str]] = []  # (kind, location, path)
    filesystem: pafs.FileSystem | None = None
    for text in paths:
        if is_uri(text):
            found, here = _from_uri(text)
        else:
            found, here = _from_local(text), pafs.LocalFileSystem()
        if filesystem is not None and not filesystem.equals(here):
            raise FsanetError(
                f"{text} is on another file system than the inputs before it: run one file "
                "system at a time"
            )
        filesystem = here
        files += found
    if not files or filesystem is None:
        raise FsanetError(f"no images or videos in {', '.join(paths)}")
    ordered = [f for f in files if f[0] == "image"] + [f for f in files if f[0] == "video"]
    return Listing(filesystem, [Unit(i, *f) for i, f in enumerate(ordered)])


def _from_local(text: str) -> list[tuple[str, str, str]]:
    if text.isdigit() and not os.path.exists(text):
        raise FsanetError(f"{text}: a camera cannot be read with --ray (give files or folders)")
    # The same listing as `fsanet predict`: its folders, its warnings, its error for a typo.
    sources = collect_sources([text])
    if any(s.kind == "camera" for s in sources):  # a /dev/videoN device
        raise FsanetError(f"{text}: a camera cannot be read with --ray (give files or folders)")
    return [(s.kind, s.location, os.path.abspath(s.location)) for s in sources]


def open_uri(uri: str, listing: bool = False) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system for `uri` and the path in it. A gs:// URI also takes
    `anonymous=true`; with `listing`, its retries end after GCS_LISTING_S unless the URI sets
    `retry_limit_seconds` (the files are then read with GCS's own patience)."""
    parts = urlsplit(uri)
    if parts.scheme != "gs":
        return pafs.FileSystem.from_uri(uri)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(GCS_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown parameter '{unknown[0]}' (a gs:// URI takes {', '.join(GCS_PARAMETERS)})"
        )
    limit = query.get("retry_limit_seconds")
    try:
        seconds = float(limit) if limit else GCS_LISTING_S if listing else None
    except ValueError:
        raise ValueError(f"retry_limit_seconds must be a number, got '{limit}'") from None
    filesystem = pafs.GcsFileSystem(
        anonymous=query.get("anonymous", "false").lower() in ("true", "1"),
        scheme=query.get("scheme", "https"),  # (pyarrow picks http for anonymous)
        endpoint_override=query.get("endpoint_override"),
        retry_time_limit=None if seconds is None else timedelta(seconds=seconds),
    )
    return filesystem, (parts.netloc + parts.path).rstrip("/")


def _from_uri(uri: str) -> tuple[list[tuple[str, str, str]], pafs.FileSystem]:
    # Records name files by the URI without its query (`?endpoint_override=...` says how
    # to reach the store, not which file it is).
    name = uri.partition("?")[0]
    # A store lists a large bucket in one slow call: say what is being waited for.
    with progress.bar(desc=f"listing {name}", bar_format="{desc}"):
        return _list_uri(uri, name)


def _list_uri(uri: str, name: str) -> tuple[list[tuple[str, str, str]], pafs.FileSystem]:
    try:
        lister, root = open_uri(uri, listing=True)
        info = lister.get_file_info(root)
        filesystem = open_uri(uri)[0] if uri.startswith("gs://") else lister
    except (ArrowException, OSError, ValueError) as e:
        raise FsanetError(f"cannot open {uri}: {_reason(uri, e)}") from None
    if info.type == pafs.FileType.NotFound:
        raise FsanetError(f"{name} does not exist: give image or video files or folders")
    if info.type == pafs.FileType.File:
        kind = _kind(root)
        if kind is None:
            raise FsanetError(f"{name} is not an image or video file (by its name)")
        return [(kind, name, root)], filesystem
    try:
        entries = lister.get_file_info(pafs.FileSelector(root, recursive=True))
    except (ArrowException, OSError) as e:
        raise FsanetError(f"cannot list {uri}: {_reason(uri, e)}") from None
    base = name.rstrip("/")
    found = []
    for entry in entries:
        kind = _kind(entry.path) if entry.type == pafs.FileType.File else None
        if kind is not None:
            inside = PurePosixPath(entry.path).relative_to(PurePosixPath(root))
            found.append((inside, kind, entry.path))
    # Sorted as `fsanet predict` sorts a folder's paths: part by part.
    found.sort(key=lambda f: f[0].parts)
    return [(kind, f"{base}/{inside.as_posix()}", path) for inside, kind, path in found], filesystem


def _kind(path: str) -> str | None:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return "video" if suffix in VIDEO_SUFFIXES else None


def _reason(uri: str, error: BaseException) -> str:
    """The error's first line, or what to do when GCS found no credentials (its own
    message is a paragraph on one line)."""
    if uri.startswith("gs://") and "OAuth2 access token" in str(error):
        return (
            "no Google Cloud credentials (set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud"
            " auth application-default login`; a public bucket reads with ?anonymous=true)"
        )
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

"""Get a registry file: cache (verified) -> mirror directory -> public URL, sha256 always."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fsanet.assets.zoo import RemoteFile
from fsanet.core import progress
from fsanet.core.errors import ChecksumError, FetchError
from fsanet.core.files import atomic_path, ensure_dir, home_dir, remove_stale_temps, sha256_file

MIRROR_ENV = "FSANET_MIRROR"
_TIMEOUT_S = 30


def mirror_dirs(mirror: str | Path | None = None) -> list[Path]:
    """The mirror directories to search: the one given, else `$FSANET_MIRROR` (os.pathsep list)."""
    if mirror:
        return [Path(mirror).expanduser()]
    env = os.environ.get(MIRROR_ENV, "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p]


def cache_path(remote: RemoteFile) -> Path:
    return home_dir() / "files" / remote.filename


def fetch(remote: RemoteFile, mirror: str | Path | None = None) -> Path:
    """Return the path of a verified copy of `remote` in the cache, getting it if needed."""
    target = cache_path(remote)
    if target.is_file():
        if sha256_file(target) == remote.sha256:
            return target
        print(f"fsanet: cached {target} is damaged; getting it again", file=sys.stderr)
        target.unlink()

    remove_stale_temps(ensure_dir(target.parent))  # what killed downloads left behind
    mirrors = mirror_dirs(mirror)
    for directory in mirrors:
        for candidate in (directory / remote.mirror_path, directory / remote.filename):
            if candidate.is_file():
                _copy_verified(candidate, target, remote)
                return target
    _download(remote, target, mirrors)
    return target


def _check(path: Path, remote: RemoteFile, origin: str) -> None:
    actual = sha256_file(path)
    if actual != remote.sha256:
        raise ChecksumError(
            f"{origin} has sha256 {actual}, expected {remote.sha256} for {remote.filename}: "
            "the file is damaged or not the pinned version; replace it"
        )


def _copy_verified(source: Path, target: Path, remote: RemoteFile) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
        _check(tmp, remote, str(source))


def _download(remote: RemoteFile, target: Path, mirrors: list[Path]) -> None:
    searched = ", ".join(str(m) for m in mirrors) or "none given"
    hint = (
        f"put {remote.filename} in a mirror directory (at {remote.mirror_path} or top level) "
        f"and pass --mirror DIR or set {MIRROR_ENV} (mirrors searched: {searched})"
    )
    request = urllib.request.Request(remote.url, headers={"User-Agent": "fsanet"})
    try:
        with atomic_path(target) as tmp:
            with (
                urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
                open(tmp, "wb") as out,
            ):
                total = int(response.headers.get("Content-Length") or 0) or remote.size
                with progress.bar(
                    total=total, unit="B", unit_scale=True, desc=remote.filename
                ) as bar:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
            _check(tmp, remote, remote.url)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"could not download {remote.url} ({reason}); {hint}") from e

"""Files moved to replicas through Ray's object store: no shared file system needed.

The driver packs a folder's files (an engine artifact, the detector's model) with the sha256
of each; a replica writes them into a temporary folder of its own and checks every sha256
on arrival, then the artifact's own manifest check runs as well. A replica never builds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fsanet.core.errors import ArtifactError
from fsanet.core.files import remove_stale_temps
from fsanet.engine.artifact import MANIFEST, Artifact


class TransferError(ArtifactError):
    """A file arrived damaged or is not a plain file name."""


@dataclass(frozen=True)
class Package:
    """The files of one folder, by name, and the sha256 each had when packed."""

    name: str  # the folder's name (an engine keeps its name on the replica)
    files: dict[str, bytes]
    sha256: dict[str, str]

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(folder: Path, names: list[str]) -> Package:
    """The named files of `folder`."""
    files = {name: (folder / name).read_bytes() for name in names}
    return Package(folder.name, files, {name: _digest(data) for name, data in files.items()})


def pack_artifact(artifact: Artifact) -> Package:
    """An engine's manifest and model files (nothing else of its folder travels)."""
    names = [MANIFEST]
    for model in artifact.manifest.models:
        names += [model.file] + ([model.weights] if model.weights else [])
    return pack(artifact.path, names)


def unpack(package: Package, parent: Path) -> Path:
    """Write the package into `parent/<name>`, each file checked against its sha256."""
    if not _plain(package.name) or set(package.files) != set(package.sha256):
        raise TransferError(f"package {package.name!r} is malformed")
    for name, data in package.files.items():  # all checked before anything is written
        if not _plain(name):
            raise TransferError(f"package {package.name}: {name!r} is not a plain file name")
        if _digest(data) != package.sha256[name]:
            raise TransferError(
                f"{package.name}/{name} arrived damaged (sha256 differs from the sender's)"
            )
    folder = parent / package.name
    folder.mkdir(parents=True, exist_ok=False)
    for name, data in package.files.items():
        (folder / name).write_bytes(data)
    return folder


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def scratch_folder(kind: str) -> Path:
    """A temporary folder of this process (a replica or worker) under the system's temporary
    directory, `fsanet-<kind>/`. It is named with the process id, so that the next one on the
    node removes it if Ray killed this process before it could (a cluster's shutdown kills
    replicas without running their clean-up), as `remove_stale_temps` does for builds."""
    parent = Path(tempfile.gettempdir()) / f"fsanet-{kind}"
    parent.mkdir(exist_ok=True)
    remove_stale_temps(parent)
    return Path(tempfile.mkdtemp(prefix=f".worker.{os.getpid()}.", suffix=".tmp", dir=parent))


class Unpacked:
    """A package unpacked into a temporary folder of this process, removed by `close`."""

    def __init__(self, package: Package) -> None:
        self._parent = scratch_folder("replica")
        try:
            self.path = unpack(package, self._parent)
        except BaseException:
            self.close()
            raise

    def artifact(self) -> Artifact:
        """The unpacked engine, its model files checked against its manifest's sha256."""
        return Artifact.load(self.path, verify=True)

    def close(self) -> None:
        shutil.rmtree(self._parent, ignore_errors=True)

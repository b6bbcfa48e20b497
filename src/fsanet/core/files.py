"""Where fsanet keeps its files, and how it writes them: verified and atomic."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import platformdirs

from fsanet.core.errors import FsanetError

# A temporary name beside the final one: ".{final name}.{owner pid}.{random}.tmp".
_TMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
# One written before the pid was in the name: ".{final name}.{random}.tmp". Its owner cannot
# be told, so it is left alone until it is this old: no build or download takes a day.
_LEGACY_TMP = re.compile(r"^\..+\.[^.]+\.tmp$")
LEGACY_TMP_AGE_S = 24 * 3600
_RANDOM_CHARS = 8  # what tempfile.mkdtemp puts between prefix and suffix
_OUTPUT_TMP = re.compile(r"^\.(.+)\.(\d+)\.[a-z0-9_]{8}\.tmp$")
# A video `fsanet predict` wrote before its temporaries were folders.
_OLD_VIDEO_TMP = re.compile(r"^\..+\.mp4\.(\d+)\.tmp\.mp4$")


def home_dir() -> Path:
    """The cache root: `$FSANET_HOME`, else the user cache directory."""
    env = os.environ.get("FSANET_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("fsanet"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cannot_write(path: str | Path, error: OSError) -> FsanetError:
    """The one-line error for an OS error on an output path: the path and why."""
    culprit = str(error.filename) if error.filename else str(path)
    if isinstance(error, FileExistsError):  # mkdir where a file is
        reason = f"{culprit} is a file, not a folder"
    else:
        reason = error.strerror or str(error) or type(error).__name__
        if culprit != str(path):
            reason += f" ({culprit})"
    return FsanetError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """OS errors inside the block (unwritable, under a file, a folder...) name `path`."""
    try:
        yield
    except OSError as e:
        raise cannot_write(path, e) from e


def ensure_dir(path: Path, for_file: Path | None = None) -> Path:
    """`path` as a writable folder, created if needed, or a one-line FsanetError now (before
    minutes of work whose result could not be saved) naming `for_file` if given."""
    with writing(for_file or path):
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # os.access is wrong for root and ACLs
    return path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success.

    Works for files and directories: whatever the caller creates at the yielded path
    replaces `final` as a whole, so readers never see a half-written result. The temporary
    folder's name holds this process's id, so that `remove_stale_temps` can tell debris
    (its writer was killed) from another process's work in progress.
    """
    tmp = temp_folder(final)
    target = tmp / final.name
    try:
        yield target
        with writing(final):
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_folder(final: Path) -> Path:
    """A new empty folder beside `final`, named for it and for this process (see
    `atomic_path`); the caller writes `final`'s name inside it and removes it."""
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(
            tempfile.mkdtemp(
                prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent
            )
        )


def name_fits(final: Path) -> bool:
    """Whether `final`, and the temporary folder `atomic_path` writes it in, are within the
    file system's limits on a name and a path (else ENAMETOOLONG at the first write)."""
    # os.path.exists: Path.exists raises on a name too long, the case looked for here.
    existing = next(p for p in (final.absolute(), *final.absolute().parents) if os.path.exists(p))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    temp = f".{final.name}.{os.getpid()}.{'x' * _RANDOM_CHARS}.tmp"
    names = [*final.absolute().relative_to(existing).parent.parts, temp, final.name]
    longest = max(len(os.fsencode(n)) for n in names)
    whole = len(os.fsencode(str(final.absolute().parent / temp / final.name)))
    return longest <= name_max and whole < path_max


def refuse_overwrites(inputs: Iterable[str | Path], outputs: Iterable[str | Path]) -> None:
    """FsanetError naming the first of `outputs` that is one of `inputs` (the same path, a
    link to it, another name of it), or that another output writes too. Outputs that do not
    exist yet cannot be an input: inputs are only looked at when one does."""
    written: dict[tuple[int, int] | str, Path] = {}
    for output in map(Path, outputs):
        key = _identity(output)
        if key in written:
            raise FsanetError(f"cannot write {output}: {written[key]} is written there too")
        written[key] = output
    if not any(isinstance(key, tuple) for key in written):
        return
    for path in inputs:
        output = written.get(_identity(Path(path)))
        if output is not None:
            same = "an input" if str(output) == str(path) else f"the input {path}"
            raise FsanetError(
                f"cannot write {output}: it is {same}, which would be lost; "
                "write the outputs elsewhere"
            )


def _identity(path: Path) -> tuple[int, int] | str:
    """A file by its device and inode (links and other names are the same file), or a path
    not there yet by where it resolves. `missing/../a.jpg` is `a.jpg` once the writer has
    made `missing`: resolved as text too."""
    for name in (path, os.path.realpath(path)):
        try:
            found = os.stat(name)
        except (OSError, ValueError):
            continue
        return (found.st_dev, found.st_ino)
    return os.path.realpath(path)


def remove_stale_outputs(directory: Path) -> list[Path]:
    """Remove what a killed `atomic_path` (or `temp_folder`) writer left in a folder of the
    user's, such as `fsanet predict`'s output folder; returns what was removed.

    Stricter than `remove_stale_temps`, since a user's folder may hold anything: only a
    folder named exactly as `temp_folder` names them (mkdtemp's 8 letters) whose owner is
    gone and which holds nothing but the final name; or a video temporary file of an earlier
    `predict` (`.{name}.{pid}.tmp.mp4`) whose owner is gone. No age rule."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if _stale_output(entry):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _stale_output(entry: Path) -> bool:
    # Names first: a folder of photos may hold many files, and only names cost nothing.
    try:
        if (match := _OUTPUT_TMP.match(entry.name)) is not None:
            if entry.is_symlink() or not entry.is_dir():
                return False
            only_final = all(p.name == match[1] for p in entry.iterdir())
            return only_final and _owner_gone(int(match[2]), entry)
        if (match := _OLD_VIDEO_TMP.match(entry.name)) is not None:
            return entry.is_file() and not entry.is_symlink() and _owner_gone(int(match[1]), entry)
    except OSError:
        pass
    return False


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary folders `atomic_path` left in `directory` when its process was
    killed (SIGKILL, power loss); returns what was removed.

    A folder is stale when its owner is gone: no process has its pid, or the process with
    that pid started after the folder was last written (the pid was reused). Folders of
    running processes, a concurrent build's included, are kept.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if not entry.is_dir() or entry.is_symlink():
                continue
            if (match := _TMP.match(entry.name)) is not None:
                stale = _owner_gone(int(match[1]), entry)
            else:
                stale = _LEGACY_TMP.match(entry.name) is not None and _older_than(
                    entry, LEGACY_TMP_AGE_S
                )
            if stale:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _owner_gone(pid: int, entry: Path) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        pass  # alive, another user's
    started = process_start_time(pid)
    try:
        return started is not None and started > entry.stat().st_mtime + 1.0
    except OSError:
        return False


def _older_than(entry: Path, seconds: float) -> bool:
    try:
        return time.time() - entry.stat().st_mtime > seconds
    except OSError:
        return False


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), where the OS says (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")

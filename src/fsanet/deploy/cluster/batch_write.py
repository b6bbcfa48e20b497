"""Where `fsanet predict --ray` writes its records: JSON Lines (as `fsanet predict`) or one
Parquet file with the same rows, in source order whatever order the workers finish in.

Files are written under a temporary name and renamed when complete: a failed or
interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fsanet.core.errors import FsanetError
from fsanet.core.files import atomic_path, remove_stale_outputs, writing
from fsanet.faces.options import RECORD_FORMATS
from fsanet.faces.outputs import jsonl_writer

FORMATS = RECORD_FORMATS
PARQUET_ROWS = 10_000  # records per row group


def parquet_schema(rotation: bool) -> Any:
    """The Parquet columns of a record (`fsanet predict`'s JSON keys; absent ones null)."""
    import pyarrow as pa

    angles = pa.struct([(k, pa.float64()) for k in ("yaw", "pitch", "roll")])
    fields = [
        ("source", pa.string()),
        ("frame", pa.int64()),
        ("time", pa.float64()),
        ("face", pa.int64()),
        ("track", pa.int64()),
        ("box", pa.list_(pa.float64())),
        ("score", pa.float64()),
        ("yaw", pa.float64()),
        ("pitch", pa.float64()),
        ("roll", pa.float64()),
        ("landmarks", pa.list_(pa.list_(pa.float64()))),
        ("raw", angles),
    ]
    if rotation:
        fields.append(("rotation", pa.list_(pa.list_(pa.float64()))))
    return pa.schema(fields)


@contextlib.contextmanager
def records_writer(
    path: str | Path | None, fmt: str = "jsonl", rotation: bool = False
) -> Iterator[Callable[[str], None]]:
    """A function that takes one file's records as JSON Lines text and writes them to `path`
    ('-': stdout, JSON Lines only; None: nowhere) in `fmt`."""
    if fmt not in FORMATS:
        raise FsanetError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    if fmt == "jsonl" or path is None:
        with jsonl_writer(path) as out:
            yield (lambda text: None) if out is None else out.write
        return
    if str(path) == "-" or Path(path).is_dir():
        raise FsanetError(f"cannot write Parquet to {path}: give a file name")
    remove_stale_outputs(Path(path).absolute().parent)  # what a killed run left
    with atomic_path(Path(path)) as tmp, _Parquet(tmp, path, parquet_schema(rotation)) as out:
        yield out.add


class _Parquet:
    """Records gathered into row groups of a Parquet file."""

    def __init__(self, tmp: Path, final: str | Path, schema: Any) -> None:
        import pyarrow.parquet as pq

        self.final, self.schema = final, schema
        with writing(final):
            self._writer = pq.ParquetWriter(tmp, schema)
        self._rows: list[dict[str, Any]] = []

    def add(self, text: str) -> None:
        self._rows += [json.loads(line) for line in text.splitlines()]
        if len(self._rows) >= PARQUET_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            with writing(self.final):
                self._writer.write_table(pa.Table.from_pylist(self._rows, self.schema))
            self._rows = []

    def __enter__(self) -> _Parquet:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            with writing(self.final):  # the footer: disk full shows here too
                self._writer.close()  # a failed run's file is removed by atomic_path

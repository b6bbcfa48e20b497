"""How `fsanet predict --ray` opens URIs: pyarrow's file systems, and gs:// options that
pyarrow's URIs lack (no store is reached here: test_batch.py reads real buckets)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fsanet.core import progress
from fsanet.core.errors import FsanetError

pafs = pytest.importorskip(
    "pyarrow.fs", reason="pyarrow is not installed (pip install 'fsanet[cluster]')"
)

from fsanet.deploy.cluster.batch_sources import GCS_LISTING_S, list_units, open_uri  # noqa: E402


def gcs_options(filesystem: pafs.FileSystem) -> dict[str, Any]:
    assert isinstance(filesystem, pafs.GcsFileSystem)
    return filesystem.__reduce__()[1][0]  # the options it was made with


def test_a_gs_uri_reads_anonymously_when_asked() -> None:
    filesystem, path = open_uri("gs://bucket/photos/?anonymous=true&endpoint_override=h:1")
    options = gcs_options(filesystem)
    assert path == "bucket/photos"
    assert options["anonymous"] is True and options["endpoint_override"] == "h:1"
    assert options["scheme"] == "https"  # (pyarrow's own default without credentials: http)
    assert gcs_options(open_uri("gs://bucket/p?scheme=http")[0])["anonymous"] is False


def test_a_gs_listing_gives_up_in_bounded_time_but_reading_keeps_gcs_patience() -> None:
    assert gcs_options(open_uri("gs://b/p", listing=True)[0])["retry_time_limit"] == timedelta(
        seconds=GCS_LISTING_S
    )
    assert gcs_options(open_uri("gs://b/p")[0])["retry_time_limit"] is None
    given = open_uri("gs://b/p?retry_limit_seconds=2.5", listing=True)[0]
    assert gcs_options(given)["retry_time_limit"] == timedelta(seconds=2.5)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (
            "region=eu",
            "unknown parameter 'region' (a gs:// URI takes anonymous, endpoint_override, "
            "retry_limit_seconds, scheme)",
        ),
        ("retry_limit_seconds=soon", "retry_limit_seconds must be a number, got 'soon'"),
    ],
)
def test_a_bad_gs_query_is_one_line(query: str, reason: str) -> None:
    with pytest.raises(FsanetError) as e:
        list_units([f"gs://b/p?{query}"])
    assert str(e.value) == f"cannot open gs://b/p?{query}: {reason}"


def test_other_uris_are_pyarrows(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    filesystem, path = open_uri(tmp_path.as_uri())
    assert isinstance(filesystem, pafs.LocalFileSystem) and path == str(tmp_path)
    listing = list_units([tmp_path.as_uri()])
    assert [u.location for u in listing.units] == [f"{tmp_path.as_uri()}/a.jpg"]


def test_listing_a_uri_says_so_while_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    monkeypatch.setattr(progress, "_enabled", True)
    list_units([tmp_path.as_uri() + "?"])  # named without its query
    shown = capsys.readouterr().err
    assert f"listing {tmp_path.as_uri()}" in shown and "?" not in shown
    monkeypatch.setattr(progress, "_enabled", False)  # -q
    list_units([tmp_path.as_uri()])
    assert capsys.readouterr().err == ""

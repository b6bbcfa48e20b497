"""`fsanet predict --ray` on real Ray (loopback): the same records as `fsanet predict` on a
folder of photos, a `file://` URI, an `s3://` bucket (moto's S3 server) and videos, as JSON
Lines and as Parquet; one-line errors, nothing half-written, and no Ray process left behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fsanet.cli import main
from fsanet.core.errors import FsanetError
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.predict import predict
from fsanet.faces.tracking import OneEuro

pytest.importorskip("ray", reason="Ray is not installed (pip install 'fsanet[cluster]')")

from pyarrow import fs as pafs

from fsanet.deploy.cluster.batch_sources import list_units
from fsanet.deploy.cluster.batch_write import records_writer

pytestmark = pytest.mark.real

FRAMES = 6  # per video: enough for tracks, short enough for a 2-core machine
PHOTOS = (2, 13, 43, 63)  # AFLW2000 photos with a clear face
ANGLES = ("yaw", "pitch", "roll")


@pytest.fixture(scope="module")
def inputs(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder (photos, one in a subfolder, a broken 'jpg'), a second folder given as a
    file:// URI, a photo of the first given again, and two real clips: a classroom of moving
    faces, and one face."""
    root = tmp_path_factory.mktemp("batch")
    folder, other = root / "photos", root / "uri"
    (folder / "sub").mkdir(parents=True)
    other.mkdir()
    names = [folder / "image00002.jpg", folder / "sub" / "b.jpg", folder / "a.jpg", other / "c.jpg"]
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        for n, path in zip(PHOTOS, names, strict=True):
            path.write_bytes(z.read(f"AFLW2000/image{n:05d}.jpg"))
    (folder / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    videos = [str(shared / "videos" / "classroom.mp4"), str(shared / "videos" / "talking-head.mp4")]
    return {
        # What the single-machine run reads, and what the Ray run reads.
        "local": [str(folder), str(other), str(names[2]), *videos],
        "ray": [str(folder), other.as_uri(), str(names[2]), *videos],
        "uri": other.as_uri(),
        "other": str(other),
        "root": root,
    }


@pytest.fixture(scope="module")
def expected(inputs: dict[str, Any], fusion_engine: PoseEngine) -> list[dict[str, Any]]:
    """`fsanet predict`'s records in this process, the URI folder's named by its URI."""
    out = io.StringIO()
    estimator = HeadPoseEstimator(fusion_engine)  # the session's engine: not closed here
    summary = predict(
        inputs["local"], estimator, jsonl=out, max_frames=FRAMES, rotation=True, smooth=OneEuro()
    )
    assert summary.images == 5 and summary.frames == 2 * FRAMES and len(summary.failed) == 1
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    for record in records:
        if record["source"].startswith(inputs["other"]):
            record["source"] = inputs["uri"] + record["source"][len(inputs["other"]) :]
    assert len({r["track"] for r in records if r["frame"] is not None}) > 3  # real tracks
    return records


OPTIONS = ("--frames", str(FRAMES), "--rotation", "--smooth", "-q")


def assert_same_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Same records in the same order; angles within 1e-4 degrees, everything else equal."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert {k: v for k, v in a.items() if k not in ANGLES} == {
            k: v for k, v in b.items() if k not in ANGLES
        }
        assert all(abs(a[k] - b[k]) <= 1e-4 for k in ANGLES), (a, b)


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries `mark` (what one run started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def run_fsanet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fsanet", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=180, env=env or dict(os.environ)
    )


def cluster_env() -> dict[str, str]:
    """A driver joining the test cluster needs its token (conftest's `ray_env`)."""
    return {**os.environ, "RAY_AUTH_MODE": "token"}


def test_ray_records_equal_single_machine_records_on_a_local_cluster(
    inputs: dict[str, Any], expected: list[dict[str, Any]], fusion_artifact: Artifact
) -> None:
    # A local cluster of its own (2 CPUs: two workers), records on stdout, and every process
    # it started gone when it exits: each carries this run's mark in its environment.
    mark = f"FSANET_BATCH_TEST={uuid.uuid4().hex}"
    key, value = mark.split("=")
    env = {**os.environ, key: value}
    done = run_fsanet(
        "predict", "--ray", "--threads", "2", *inputs["ray"], "--engine", str(fusion_artifact.path),
        *OPTIONS, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-3000:]
    got = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: JSON Lines only
    assert_same_records(got, expected)
    assert "7/8 sources: 5 images, 12 video frames" in done.stderr
    assert (
        "skipping " in done.stderr and "broken.jpg: not an image OpenCV can decode" in done.stderr
    )
    deadline, left = time.monotonic() + 15, marked(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = marked(mark)
    for pid in left:  # clean up what a failed shutdown left, by pid, then fail
        os.kill(pid, signal.SIGKILL)
    assert not left, f"Ray processes left after the run: {left}"


def test_parquet_on_a_two_node_cluster_has_the_same_rows(
    inputs: dict[str, Any], expected: list[dict[str, Any]], fusion_artifact: Artifact, ray_cluster
) -> None:
    import pyarrow.parquet as pq

    head, _ = ray_cluster  # two nodes: workers on either, the local files read on the head's
    out = inputs["root"] / "records.parquet"
    done = run_fsanet(
        "predict", "--ray", "--address", head.address, *inputs["ray"],
        "--engine", str(fusion_artifact.path), "--format", "parquet", "--jsonl", str(out),
        *OPTIONS, env=cluster_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-3000:]
    assert done.stdout.startswith("7/8 sources")  # the summary: the records went to the file
    rows = pq.read_table(out).to_pylist()
    # A JSON record leaves out what a Parquet row holds as null (`raw` on a photo).
    assert_same_records([{k: v for k, v in r.items() if v is not None} for r in rows], [
        {k: v for k, v in r.items() if v is not None} for r in expected
    ])  # fmt: skip
    assert pq.read_schema(out).field("raw").type.num_fields == 3
    assert not list(out.parent.glob(".*.tmp"))


def test_nothing_is_written_when_no_input_can_be_read(
    inputs: dict[str, Any], fusion_artifact: Artifact, ray_cluster
) -> None:
    head, _ = ray_cluster
    bad = inputs["root"] / "bad"
    bad.mkdir()
    (bad / "one.png").write_bytes(b"\x89PNG broken")
    (bad / "two.jpg").write_bytes(b"")
    out = inputs["root"] / "kept.jsonl"
    out.write_text("an earlier run's records\n")
    done = run_fsanet(
        "predict", "--ray", "--address", head.address, str(bad), "--jsonl", str(out),
        "--engine", str(fusion_artifact.path), "-q", env=cluster_env(),
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "fsanet: error: no input could be read (2 tried)"
    assert out.read_text() == "an earlier run's records\n"  # untouched, no temp beside it
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_a_bad_path_or_uri_is_one_line_before_ray_starts(
    fusion_artifact: Artifact, capsys: pytest.CaptureFixture
) -> None:
    engine = ["--engine", str(fusion_artifact.path), "-q"]
    cases = {
        "/no/such/folder": "/no/such/folder does not exist: give image or video files, folders, "
        "or a camera index",
        "file:///no/such/folder": "file:///no/such/folder does not exist: give image or video "
        "files or folders",
        "nope://bucket/x": "cannot open nope://bucket/x: Unrecognized filesystem type in URI: "
        "nope://bucket/x",
    }
    for path, message in cases.items():
        assert main(["predict", "--ray", path, *engine]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"fsanet: error: {message}"]


def test_a_records_file_that_is_an_input_is_refused_before_ray_starts(
    fusion_artifact: Artifact, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import ray

    from fsanet.deploy.cluster.batch import predict_on_ray

    photo = tmp_path / "a.jpg"  # a copy: the user's photo, should the check fail
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        photo.write_bytes(z.read(f"AFLW2000/image{PHOTOS[0]:05d}.jpg"))
    before = photo.read_bytes()
    lost = "which would be lost; write the outputs elsewhere"
    # The command line checks local paths before the engine (there is none here)...
    for fmt in ("jsonl", "parquet"):
        argv = ["--format", fmt, "--jsonl", str(photo), str(photo), "--engine", "/no/such"]
        assert main(["predict", "--ray", "-q", *argv]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [
            f"fsanet: error: cannot write {photo}: it is an input, {lost}"
        ]
    # ... and predict_on_ray the files a file:// URI names, before a cluster starts.
    with pytest.raises(FsanetError, match=f"cannot write {photo}: it is .*input.*, {lost}"):
        predict_on_ray([tmp_path.as_uri()], fusion_artifact, jsonl=photo, fmt="parquet")
    assert not ray.is_initialized()
    assert photo.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_options_that_do_not_go_together_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cases = {
        ("--format", "parquet"): "--address and --format parquet go with --ray",
        ("--address", "127.0.0.1:1"): "--address and --format parquet go with --ray",
        ("--ray", "--format", "parquet"): "--format parquet writes a file: give --jsonl "
        "FILE.parquet",
        ("--ray", "--output", str(tmp_path)): "--ray writes records only: give --jsonl FILE, "
        "not --output",
    }
    for args, message in cases.items():
        assert main(["predict", str(tmp_path), *args]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"fsanet: error: {message}"]


def test_without_the_cluster_extra_it_is_one_line(tmp_path: Path) -> None:
    # Ray made unimportable in a fresh process: what a plain install sees.
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from fsanet.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "predict", "--ray", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "fsanet: error: fsanet predict --ray needs the 'ray' package: pip install 'fsanet[cluster]'"
    ]


def test_files_are_listed_in_the_single_machine_order(inputs: dict[str, Any]) -> None:
    listing = list_units(inputs["ray"])
    kinds = [u.kind for u in listing.units]
    assert kinds == ["image"] * 6 + ["video"] * 2  # every image first, as `predict` runs
    assert [u.order for u in listing.units] == list(range(8))
    names = [u.location.rsplit("/", 2)[-2:] for u in listing.units[:6]]
    # A folder sorted by path parts (`sub/...` after `a.jpg`), the URI's files by their URI.
    assert names == [
        ["photos", "a.jpg"],
        ["photos", "image00002.jpg"],
        ["sub", "b.jpg"],
        ["sub", "broken.jpg"],
        ["uri", "c.jpg"],
        ["photos", "a.jpg"],  # given twice: recorded twice, as `fsanet predict` does
    ]
    assert listing.units[4].location == inputs["uri"] + "/c.jpg" and listing.local


def test_a_failed_parquet_write_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "records.parquet"
    record = {"source": "a.jpg", "frame": None, "time": None, "face": 0, "track": None}
    record |= {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "yaw": 1.0, "pitch": 2.0, "roll": 3.0}
    with pytest.raises(RuntimeError), records_writer(out, "parquet") as write:
        write(json.dumps(record) + "\n")
        raise RuntimeError("a worker died")
    assert list(tmp_path.iterdir()) == []
    with records_writer(out, "parquet") as write:
        write(json.dumps(record) + "\n")
    import pyarrow.parquet as pq

    (row,) = pq.read_table(out).to_pylist()
    assert {k: v for k, v in row.items() if v is not None} == {
        k: v for k, v in record.items() if v is not None
    }


# The driver found the engine (checked) before its model changed on disk: what travels no
# longer matches the manifest, and the worker refuses it. A fresh process: the cluster's token
# is read when Ray is imported.
DAMAGED = """
import sys
from fsanet.engine.artifact import Artifact
from fsanet.deploy.cluster.batch import BatchOptions, predict_on_ray
from fsanet.core.errors import FsanetError
artifact = Artifact.load(sys.argv[1], verify=False)
try:
    predict_on_ray([sys.argv[3]], artifact, BatchOptions(sys.argv[2]), jsonl=sys.argv[4])
except FsanetError as e:
    print(e)
"""


def test_a_worker_checks_the_engine_it_gets_by_sha256(
    inputs: dict[str, Any], fusion_artifact: Artifact, ray_cluster, tmp_path: Path
) -> None:
    copy = Artifact.load(shutil.copytree(fusion_artifact.path, tmp_path / "engine"))
    model = copy.path / copy.manifest.models[0].file
    model.write_bytes(model.read_bytes() + b"\0")
    head, _ = ray_cluster
    out = tmp_path / "records.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", DAMAGED, str(copy.path), head.address, inputs["other"], str(out)],
        capture_output=True, text=True, timeout=180, env=cluster_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stdout.splitlines()  # the worker's own copy, in a folder of its own
    assert line.startswith("a Ray worker failed: /") and line.endswith(
        f"/engine/{model.name} does not match its manifest (sha256 differs): the model is "
        "damaged; rebuild with `fsanet build --force`"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]  # no records file


# --- Object stores: real S3 and GCS APIs on loopback (moto's S3 server, and
# gcp-storage-emulator), each started and stopped by its process id; photos and a video read
# from a bucket give the records `fsanet predict` gives for the same files on disk, named by
# their URIs.

STORE_FRAMES = 4
BUCKET = "faces"
# moto accepts any key; a real store takes them from the environment the same way.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fsanet-test", "AWS_SECRET_ACCESS_KEY": "fsanet-test"}
GCS = "endpoint_override={endpoint}&scheme=http"  # how to reach the emulator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def loopback_server(command: list[str], port: int, name: str) -> Iterator[str]:
    """A store's server on 127.0.0.1:`port`, ready, and stopped by its process id."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://{endpoint}/", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with loopback_server(command, port, "moto's S3 server") as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
        "--port", str(port), "--in-memory",
    ]  # fmt: skip
    with loopback_server(command, port, "gcp-storage-emulator") as endpoint:
        yield endpoint


def uri(endpoint: str, key: str) -> str:
    """An s3:// URI with the store's address in its query, as pyarrow reads it."""
    return f"s3://{BUCKET}/{key}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


@pytest.fixture(scope="module")
def files(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree each bucket holds under `set/`, on disk: photos, one in a subfolder, and a
    clip."""
    root = tmp_path_factory.mktemp("store") / "set"
    (root / "sub").mkdir(parents=True)
    names = ["image00002.jpg", "sub/b.jpg", "a.jpg", "sub/c.jpg"]
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        for n, name in zip(PHOTOS, names, strict=True):
            (root / name).write_bytes(z.read(f"AFLW2000/image{n:05d}.jpg"))
    (root / "clip.mp4").write_bytes((shared / "videos" / "talking-head.mp4").read_bytes())
    return root


def upload(store: pafs.FileSystem, root: Path) -> None:
    store.create_dir(BUCKET)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with store.open_output_stream(f"{BUCKET}/set/{path.relative_to(root).as_posix()}") as out:
            out.write(path.read_bytes())


@pytest.fixture(scope="module")
def s3_files(files: Path, s3_endpoint: str) -> Path:
    store = pafs.S3FileSystem(
        endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
        access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], allow_bucket_creation=True,
    )  # fmt: skip
    upload(store, files)
    return files


@pytest.fixture(scope="module")
def gcs_files(files: Path, gcs_endpoint: str) -> Path:
    store = pafs.GcsFileSystem(
        anonymous=True, scheme="http", endpoint_override=gcs_endpoint, project_id="fsanet-test"
    )  # (a bucket is made in a project)
    upload(store, files)
    return files


@pytest.fixture(scope="module")
def disk_records(files: Path, fusion_engine: PoseEngine) -> list[dict[str, Any]]:
    """`fsanet predict`'s records for the tree on disk."""
    out = io.StringIO()
    summary = predict(
        [str(files)], HeadPoseEstimator(fusion_engine), jsonl=out, max_frames=STORE_FRAMES,
        rotation=True,
    )  # fmt: skip
    assert summary.images == 4 and summary.frames == STORE_FRAMES
    return [json.loads(line) for line in out.getvalue().splitlines()]


def check_bucket_run(
    done: subprocess.CompletedProcess, disk: list[dict[str, Any]], files: Path, named: str
) -> None:
    """The records of a run over a bucket: those from disk, named by the URI (no query)."""
    assert done.returncode == 0, done.stderr[-3000:]
    expected = [{**r, "source": named + r["source"][len(str(files)) :]} for r in disk]
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert_same_records(got, expected)
    assert {r["source"] for r in got} >= {f"{named}/sub/b.jpg", f"{named}/clip.mp4"}
    assert all(set(ANGLES) <= set(r) for r in got)
    assert f"5/5 sources: 4 images, {STORE_FRAMES} video frames" in done.stderr


def test_records_from_an_s3_bucket_equal_the_records_from_disk(
    s3_files: Path, s3_endpoint: str, disk_records: list[dict[str, Any]], fusion_artifact: Artifact
) -> None:
    done = run_fsanet(
        "predict", "--ray", "--threads", "2", uri(s3_endpoint, "set"),
        "--engine", str(fusion_artifact.path), "--frames", str(STORE_FRAMES), "--rotation", "-q",
        env={**os.environ, **CREDENTIALS},
    )  # fmt: skip
    check_bucket_run(done, disk_records, s3_files, f"s3://{BUCKET}/set")


def test_records_from_a_gcs_bucket_equal_the_records_from_disk(
    gcs_files: Path,
    gcs_endpoint: str,
    disk_records: list[dict[str, Any]],
    fusion_artifact: Artifact,
) -> None:
    # `anonymous=true`: the emulator, like a public bucket, wants no credentials.
    where = f"gs://{BUCKET}/set?anonymous=true&{GCS.format(endpoint=gcs_endpoint)}"
    done = run_fsanet(
        "predict", "--ray", "--threads", "2", where,
        "--engine", str(fusion_artifact.path), "--frames", str(STORE_FRAMES), "--rotation", "-q",
    )  # fmt: skip
    check_bucket_run(done, disk_records, gcs_files, f"gs://{BUCKET}/set")


def test_a_missing_key_in_a_bucket_is_one_line(s3_files: Path, s3_endpoint: str) -> None:
    done = run_fsanet(
        "predict", "--ray", uri(s3_endpoint, "set/none.jpg"), "-q",
        env={**os.environ, **CREDENTIALS},
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"fsanet: error: s3://{BUCKET}/set/none.jpg does not exist: give image or video files "
        "or folders"
    ]


def test_gcs_without_credentials_is_one_line_in_bounded_time(
    gcs_files: Path, gcs_endpoint: str, tmp_path: Path
) -> None:
    # No credentials anywhere: no key file, an empty gcloud configuration, and a metadata
    # server that refuses at once (a machine on Google Cloud would otherwise have one).
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(CLOUDSDK_CONFIG=str(tmp_path), GCE_METADATA_ROOT=f"127.0.0.1:{free_port()}")
    where = f"gs://{BUCKET}/set?{GCS.format(endpoint=gcs_endpoint)}&retry_limit_seconds=3"
    started = time.monotonic()
    done = run_fsanet("predict", "--ray", where, "-q", env=env)
    # The 3 s retry limit is honoured, not GCS's own 15 minutes: a hang guard with a wide
    # margin for a busy machine, not a speed claim.
    assert time.monotonic() - started < 300
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"fsanet: error: cannot open {where}: no Google Cloud credentials (set "
        "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`; a "
        "public bucket reads with ?anonymous=true)"
    ]

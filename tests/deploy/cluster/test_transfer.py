"""Engine files through the object store: packed with their sha256, checked on arrival."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from fsanet.core.errors import ArtifactError
from fsanet.deploy.cluster.transfer import (
    Package,
    TransferError,
    Unpacked,
    pack,
    pack_artifact,
    unpack,
)
from fsanet.engine.artifact import MANIFEST, Artifact


def test_an_engine_arrives_whole_and_loads(fusion_artifact: Artifact):
    package = pack_artifact(fusion_artifact)
    models = [m.file for m in fusion_artifact.manifest.models]
    assert sorted(package.files) == sorted([MANIFEST, *models])  # nothing else of the folder
    files = Unpacked(package)
    try:
        artifact = files.artifact()
        assert artifact.name == fusion_artifact.name  # the engine keeps its name
        assert artifact.manifest == fusion_artifact.manifest
        for name in package.files:
            assert (artifact.path / name).read_bytes() == (fusion_artifact.path / name).read_bytes()
    finally:
        files.close()
    assert not files.path.exists()  # the replica's copy goes with it


def _flip_one_byte(package: Package, name: str) -> Package:
    data = bytearray(package.files[name])
    data[len(data) // 2] ^= 0xFF
    return dataclasses.replace(package, files={**package.files, name: bytes(data)})


def test_a_damaged_file_is_refused_by_its_sha256(fusion_artifact: Artifact, tmp_path: Path):
    package = pack_artifact(fusion_artifact)
    model = fusion_artifact.manifest.models[0].file
    with pytest.raises(TransferError, match=rf"{model} arrived damaged \(sha256"):
        unpack(_flip_one_byte(package, model), tmp_path)
    assert not (tmp_path / package.name).exists()  # nothing is written


def test_a_model_that_differs_from_its_manifest_is_refused(fusion_artifact: Artifact):
    """Damaged before packing (so its package sha256 matches): the manifest's check catches it."""
    package = pack_artifact(fusion_artifact)
    model = fusion_artifact.manifest.models[0].file
    bad = _flip_one_byte(package, model)
    digest = hashlib.sha256(bad.files[model]).hexdigest()
    bad = dataclasses.replace(bad, sha256={**bad.sha256, model: digest})
    files = Unpacked(bad)
    try:
        with pytest.raises(ArtifactError, match="does not match its manifest"):
            files.artifact()
    finally:
        files.close()


def test_names_that_leave_the_folder_are_refused(tmp_path: Path):
    data = b"x"
    digest = hashlib.sha256(data).hexdigest()
    for name in ("../escape", "a/b", ".."):
        package = Package("engine", {name: data}, {name: digest})
        with pytest.raises(TransferError, match="is not a plain file name"):
            unpack(package, tmp_path / "in")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "in").exists()
    with pytest.raises(TransferError, match="malformed"):
        unpack(Package("../up", {"a": data}, {"a": digest}), tmp_path / "in2")


def test_pack_reads_the_named_files_only(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    (tmp_path / "other").write_text(json.dumps({}))
    package = pack(tmp_path, ["model.onnx"])
    assert package.files == {"model.onnx": b"abc"}
    assert package.sha256 == {"model.onnx": hashlib.sha256(b"abc").hexdigest()}
    assert package.size == 3 and package.name == tmp_path.name


def test_a_killed_replicas_folder_is_removed_by_the_next(
    fusion_artifact: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import os
    import subprocess
    import sys
    import tempfile

    # A replica that unpacked and died without cleaning up (a cluster's shutdown kills them).
    script = (
        "from fsanet.deploy.cluster.transfer import scratch_folder; "
        "print(scratch_folder('replica'))"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    left = Path(child.stdout.strip())
    assert child.returncode == 0 and left.is_dir() and left.parent == tmp_path / "fsanet-replica"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    files = Unpacked(pack_artifact(fusion_artifact))
    try:
        assert not left.exists()  # its owner is gone: removed
        assert files.path.parent.parent == tmp_path / "fsanet-replica"
        assert files.artifact().name == fusion_artifact.name
    finally:
        files.close()
    assert list((tmp_path / "fsanet-replica").iterdir()) == []

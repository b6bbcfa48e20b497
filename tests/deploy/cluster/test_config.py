"""Replicas and Ray options: parsed and checked without Ray, on the command line too."""

from __future__ import annotations

import pytest

from fsanet.core.errors import FsanetError
from fsanet.deploy.cluster.config import RayOptions, Replicas


def test_replicas_parse():
    assert Replicas.parse("3") == Replicas(3, 3, auto=False)
    assert Replicas.parse("auto") == Replicas(1, None, auto=True)
    assert Replicas.parse(" 2-8 ") == Replicas(2, 8, auto=True)
    assert str(Replicas.parse("2")) == "2"
    assert str(Replicas.parse("1-4")) == "auto 1-4"
    assert str(Replicas.parse("auto")) == "auto 1-cluster CPUs"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "replicas must be 1 or more, got 0"),
        ("3-1", "needs 1 <= MIN <= MAX, got 3-1"),
        ("0-2", "needs 1 <= MIN <= MAX"),
        ("many", "replicas must be N, MIN-MAX or auto, got 'many'"),
        ("-1", "must be N, MIN-MAX or auto"),
    ],
)
def test_bad_replicas_are_one_clear_error(text: str, message: str):
    with pytest.raises(FsanetError, match=message):
        Replicas.parse(text)


def test_ray_options_are_checked():
    assert RayOptions(replica_cpus=2.5).threads == 2
    assert RayOptions(replica_cpus=0.5).threads == 1
    with pytest.raises(FsanetError, match="replica CPUs must be positive"):
        RayOptions(replica_cpus=0)
    with pytest.raises(FsanetError, match="pose replica GPUs must be 0 or more"):
        RayOptions(pose_gpus=-1)
    with pytest.raises(FsanetError, match="application name"):
        RayOptions(app="no spaces")


def test_the_command_line_checks_the_ray_options(run_cli):
    done = run_cli("serve", "--ray", "--replicas", "0")
    assert done.returncode == 2
    assert "argument --replicas: replicas must be 1 or more, got 0" in done.stderr
    done = run_cli("serve", "--replicas", "2", "--port", "0")
    assert done.returncode == 1
    assert "fsanet: error: --address and --replicas go with --ray" in done.stderr


def test_the_front_splits_a_batch_over_the_pose_replicas():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'fsanet[cluster]')")
    from fsanet.deploy.cluster.serve import front_batch

    assert front_batch(32, 1) == 32
    assert front_batch(32, 2) == 16  # 32 clients keep both replicas busy
    assert front_batch(32, 16) == 8  # never under 8 crops a call: each call costs CPU
    assert front_batch(4, 8) == 4  # nor over --max-batch


def test_whole_pixel_crops_travel_as_uint8_and_give_the_same_angles(fusion_engine) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'fsanet[cluster]')")
    import numpy as np

    from fsanet.deploy.cluster.serve import compact

    rng = np.random.default_rng(0)
    whole = rng.integers(0, 256, (16, 64, 64, 3)).astype(np.float32)
    small = compact(whole)
    assert small.dtype == np.uint8 and small.nbytes * 4 == whole.nbytes
    np.testing.assert_array_equal(fusion_engine(small), fusion_engine(whole))
    fractional = whole.copy()
    fractional[0, 0, 0, 0] += 0.5  # a crop resampled by the client: sent as it is
    assert compact(fractional) is fractional

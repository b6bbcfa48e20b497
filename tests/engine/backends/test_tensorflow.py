"""The TensorFlow reference runner's thread settings (how it spends the cores)."""

import os

import numpy as np
import pytest

from fsanet.assets.fetch import fetch
from fsanet.assets.zoo import get_variant
from fsanet.engine.backends.tensorflow import THREAD_SETTINGS, TensorflowRunner, thread_settings


@pytest.fixture(scope="module")
def capsule(shared):
    variant = get_variant("capsule")
    return fetch(variant.file), variant.input_name, [variant.output_name]


def test_settings_worth_trying():
    assert thread_settings(4) == ["split", "intra", "inter", "intra+inter"]
    assert thread_settings(1) == ["split"]  # on one core they are all the same


def test_a_setting_decides_the_cores_and_the_session_threads(capsule, crops):
    images = crops(5)
    outputs = {}
    for setting, (split, intra, inter) in THREAD_SETTINGS.items():
        with TensorflowRunner(*capsule, threads=2, thread_setting=setting) as runner:
            # Only "split" lets the base runner cut a batch; the others run it whole.
            assert runner.cores == ("split" if split else "shared")
            config = runner._session._config
            assert config.intra_op_parallelism_threads == (intra or 2)
            assert config.inter_op_parallelism_threads == (inter or 2)
            assert config.use_per_session_threads  # or the first session's pools win
            outputs[setting] = runner.infer(images)[capsule[2][0]]
    # Sessions' own intra-op pools: only when set before TensorFlow's first session.
    assert os.environ["TF_OVERRIDE_GLOBAL_THREADPOOL"] == "1"
    for setting, angles in outputs.items():
        np.testing.assert_allclose(angles, outputs["split"], atol=1e-3, err_msg=setting)


def test_the_default_follows_cores(capsule):
    assert TensorflowRunner(*capsule).thread_setting == "split"
    assert TensorflowRunner(*capsule, cores="shared").thread_setting == "intra"


def test_bad_or_late_settings(capsule):
    with pytest.raises(ValueError, match="thread_setting must be one of split, intra"):
        TensorflowRunner(*capsule, thread_setting="many")
    runner = TensorflowRunner(*capsule, threads=2)
    with runner, pytest.raises(RuntimeError, match="before the runner loads"):
        runner.thread_setting = "inter"

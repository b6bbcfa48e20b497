"""Shared fixtures. Real data comes from ../shared, used as fsanet's mirror directory.

`FSANET_TEST_HOME` keeps the cache (built engines, the AFLW2000 npz) between runs when set;
otherwise each run starts from an empty cache in a temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsanet.artifact import Artifact
from fsanet.datasets import Aflw2000
from fsanet.engine import PoseEngine

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FSANET_TEST_MIRROR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "models" / "fsanet").is_dir():
        pytest.fail(f"the real-data mirror is missing: expected {SHARED} (set FSANET_TEST_MIRROR)")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def fsanet_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point fsanet at a test cache and at the ../shared mirror, for this process and children."""
    home = Path(os.environ.get("FSANET_TEST_HOME") or tmp_path_factory.mktemp("fsanet-home"))
    saved = {k: os.environ.get(k) for k in ("FSANET_HOME", "FSANET_MIRROR")}
    os.environ["FSANET_HOME"] = str(home)
    os.environ["FSANET_MIRROR"] = str(SHARED)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def aflw2000(shared: Path) -> Aflw2000:
    from fsanet.datasets import load_aflw2000

    return load_aflw2000()


@pytest.fixture(scope="session")
def fusion_artifact(shared: Path) -> Artifact:
    """The default engine: all three variants, ONNX Runtime fp32, dynamic batch."""
    from fsanet.build import BuildOptions, build

    return build(BuildOptions.create())


@pytest.fixture(scope="session")
def fusion_engine(fusion_artifact: Artifact) -> Iterator[PoseEngine]:

    with PoseEngine.from_artifact(fusion_artifact) as engine:
        yield engine

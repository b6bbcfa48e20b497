"""Shared fixtures. Real data comes from ../shared, used as fsanet's mirror directory.

`FSANET_TEST_HOME` keeps the cache (built engines, the AFLW2000 npz) between runs when set;
otherwise each run starts from an empty cache in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fsanet.assets.aflw2000 import Aflw2000
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine

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
    from fsanet.assets.aflw2000 import load_aflw2000

    return load_aflw2000()


@pytest.fixture(scope="session")
def fusion_artifact(shared: Path) -> Artifact:
    """The default engine: all three variants, ONNX Runtime fp32, dynamic batch."""
    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build

    return build(BuildOptions.create())


@pytest.fixture(scope="session")
def flip_artifact(shared: Path) -> Artifact:
    """The default engine with flip test-time augmentation inside its graph."""
    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build

    return build(BuildOptions.create(tta="flip"))


@pytest.fixture(scope="session")
def fusion_engine(fusion_artifact: Artifact) -> Iterator[PoseEngine]:

    with PoseEngine.from_artifact(fusion_artifact) as engine:
        yield engine


# Runs the CLI in a fresh process, then reports on stderr which heavy modules it imported
# (a line "IMPORTED=" followed by the names, empty when none): the runtime never needs them.
CLI_PROBE = (
    "import sys\n"
    "from fsanet.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('tensorflow', 'tf2onnx', 'keras') if m in sys.modules)\n"
    "print('IMPORTED=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@pytest.fixture(scope="session")
def cli_command() -> list[str]:
    """The argv prefix that runs `fsanet` through the probe above."""
    return [sys.executable, "-c", CLI_PROBE]


@pytest.fixture(scope="session")
def run_cli(cli_command: list[str]) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cli_command, *args], capture_output=True, text=True, timeout=timeout
        )

    return run

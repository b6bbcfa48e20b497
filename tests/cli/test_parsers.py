"""The parsers: cheap to build, complete in docs/CLI.md, every flag declared once."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fsanet.cli.main import VERBS
from fsanet.cli.reference import render

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "src" / "fsanet" / "cli"
HEAVY = ("cv2", "onnxruntime", "tensorflow", "openvino", "fastapi", "ray")

PROBE = """
import json, sys
from fsanet.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


def _imported(argv: list[str]) -> tuple[list[str], str]:
    probe = PROBE.format(argv=argv, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stderr.strip().splitlines()[-1]), done.stdout


@pytest.mark.parametrize("argv", [["--help"], *([verb, "--help"] for verb in VERBS)])
def test_help_imports_no_runtime(argv):
    """`fsanet --help` and every verb's parser: no OpenCV, ONNX Runtime, TensorFlow, ..."""
    imported, out = _imported(argv)
    assert imported == []
    assert "usage: fsanet" in out


def test_bare_fsanet_lists_the_commands():
    done = subprocess.run(
        [sys.executable, "-m", "fsanet"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for verb, help_text in VERBS.items():
        assert verb in done.stdout and help_text in done.stdout


def test_docs_cli_is_generated_from_the_parsers():
    written = (REPO / "docs" / "CLI.md").read_text()
    assert written == render(), "regenerate: python -m fsanet.cli.reference > docs/CLI.md"
    for verb in VERBS:
        assert f"## `fsanet {verb}`" in written


def _flags(path: Path) -> list[str]:
    """The option strings a module passes to add_argument or declares as a Limit."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("add_argument", "Limit"):
                first = node.args[0]
                if isinstance(first, ast.Constant) and str(first.value).startswith("--"):
                    found.append(first.value)
    return found


# Flags that several verbs declare because they mean different things there.
SAME_NAME_OTHER_MEANING = {
    "--output": "an npz (dataset), a Markdown file (matrix), a folder (predict)",
    "--tta": "the engine's TTA (groups) vs also scoring every engine with it (matrix)",
    "--score-threshold": "YuNet's threshold: for photos/video (groups) vs the service's",
    "--batch": "sizes to time (bench), to tune at (build), crops per call (eval)",
    "--duration": "seconds per engine and batch (bench) vs of load (loadtest)",
    "--warmup": "untimed calls (bench) vs seconds (loadtest)",
    "--dataset": "what to score (eval) vs where crops come from (bench, loadtest)",
    "--end-to-end": "accuracy on photos (eval) vs speed on a video (bench)",
    "--frames": "frames per video of a run (predict) vs of a benchmark (bench)",
    "--max-batch": "Triton's max_batch_size (export) vs the server's batch (serve)",
    "--timeout": "a client's (loadtest) vs the server's (serve)",
    "--max-pixels": "skip (predict) vs refuse with 413 (serve)",
}


def test_every_flag_is_declared_once():
    """A flag two verbs share lives in an argument group (fsanet.cli.groups), not twice."""
    where: dict[str, list[str]] = {}
    for path in sorted(CLI.glob("*.py")):
        for flag in _flags(path):
            where.setdefault(flag, []).append(path.name)
    repeated = {flag: files for flag, files in where.items() if len(files) > 1}
    assert set(repeated) <= set(SAME_NAME_OTHER_MEANING), repeated


def test_verb_modules_are_small():
    for verb in VERBS:
        lines = (CLI / f"{verb}.py").read_text().count("\n")
        assert lines <= 200, (verb, lines)

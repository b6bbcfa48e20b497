"""The TensorFlow reference: the frozen graph itself, one session per graph.

Two FSA-Net graphs cannot share one TensorFlow graph (their while-loop contexts clash), so
each runner owns its own graph and session. Imported only when the reference is needed.

How TensorFlow spends the cores is a runner's `thread_setting` (THREAD_SETTINGS); which one
is fastest depends on the machine and the batch size, so `fsanet bench` tries them all.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from fsanet.core.errors import BuildError
from fsanet.engine.backends.base import Runner


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    # TensorFlow's C++ start-up lines (absl, oneDNN) bypass Python's logging: silence fd 2.
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> ModuleType:
    """Import TensorFlow quietly, or explain how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Otherwise every session shares one intra-op pool, sized by the first session the process
    # creates, and later sessions' intra_op_parallelism_threads are silently ignored. Read
    # when the first session starts: set here, before any can.
    os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")
    try:
        with _quiet_native_stderr():
            import tensorflow as tf
    except ImportError as e:
        raise BuildError(
            "TensorFlow is not installed: it is needed to build engines and as the reference; "
            "install it with `pip install 'fsanet[build]'`"
        ) from e
    return tf


def load_graph_def(path: os.PathLike) -> object:
    tf = import_tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as f:
            graph_def.ParseFromString(f.read())
    except Exception as e:  # protobuf's DecodeError and friends
        raise BuildError(f"{path} is not a TensorFlow frozen graph ({e}): fetch it again") from e
    return graph_def


# How a runner spends its `threads` cores: (cut the batch into one part per core?, intra-op
# threads, inter-op threads), None meaning `threads`. Inter-op threads run independent ops
# side by side (FSA-Net has many: parallel streams, loops over the images of a batch).
THREAD_SETTINGS: dict[str, tuple[bool, int | None, int | None]] = {
    "split": (True, 1, 1),  # one single-threaded part per core (the base runner's "split")
    "intra": (False, None, 1),  # the whole batch in one call, ops split over the cores
    "inter": (False, 1, None),  # the whole batch in one call, ops side by side
    "intra+inter": (False, None, None),  # both: TensorFlow's own default
}


def thread_settings(threads: int) -> list[str]:
    """The settings that differ on `threads` cores: all of them, or just "split" on one."""
    return list(THREAD_SETTINGS) if threads > 1 else ["split"]


class TensorflowRunner(Runner):
    """`thread_setting` (a THREAD_SETTINGS name, set before loading) decides how TensorFlow
    uses the cores; by default it follows `cores`: "split", or "intra" for "shared"."""

    backend = "tensorflow"

    def __init__(self, *args: Any, thread_setting: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.thread_setting = thread_setting or ("split" if self.cores == "split" else "intra")

    @property
    def thread_setting(self) -> str:
        return self._thread_setting

    @thread_setting.setter
    def thread_setting(self, value: str) -> None:
        if value not in THREAD_SETTINGS:
            names = ", ".join(THREAD_SETTINGS)
            raise ValueError(f"thread_setting must be one of {names}, got {value!r}")
        if self._loaded:
            raise RuntimeError("set thread_setting before the runner loads")
        self._thread_setting = value
        # The base runner cuts batches only in "split"; the others give TensorFlow all of it.
        self.cores = "split" if THREAD_SETTINGS[value][0] else "shared"

    def _load(self) -> None:
        tf = import_tensorflow()
        graph_def = load_graph_def(self.model_path)
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
        _, intra, inter = THREAD_SETTINGS[self.thread_setting]
        # Per-session thread pools: otherwise the inter-op pool is shared by every session and
        # sized by the first one created, whatever this session's config says.
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra or self.threads,
            inter_op_parallelism_threads=inter or self.threads,
            use_per_session_threads=True,
        )
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        self._feed = graph.get_tensor_by_name(_tensor(self.input_name))
        self._fetch = [graph.get_tensor_by_name(_tensor(n)) for n in self.output_names]

    def _run(self, batch: np.ndarray, worker: int, cores: int) -> list[np.ndarray]:
        return self._session.run(self._fetch, {self._feed: batch})

    def close(self) -> None:
        if self._loaded:
            self._session.close()
        super().close()


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"

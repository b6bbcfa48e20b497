"""The TensorFlow reference: the frozen graph itself, one session per graph.

Two FSA-Net graphs cannot share one TensorFlow graph (their while-loop contexts clash), so
each runner owns its own graph and session. Imported only when the reference is needed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import numpy as np

from fsanet.backends.base import Runner
from fsanet.errors import BuildError


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


class TensorflowRunner(Runner):
    backend = "tensorflow"

    def _load(self) -> None:
        tf = import_tensorflow()
        graph_def = load_graph_def(self.model_path)
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
        # One thread per call: the base runner spreads batches over cores. TensorFlow is at its
        # fastest so, even alone at batch 1 (6 ms, against 13 ms with two intra-op threads).
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=1, inter_op_parallelism_threads=1
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

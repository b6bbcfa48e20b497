"""The TensorFlow baseline: FSA-Net's own graphs, in the fastest of TensorFlow's thread settings.

Each setting is tried briefly at each batch size (after a short warm-up, in interleaved
rounds), and the fastest is the baseline measured; `ThreadChoice` records what was tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fsanet.assets.zoo import VARIANTS
from fsanet.measure.bench.timing import interleave, time_calls

BASELINES = ("tensorflow",)
# Each thread setting is tried this long per batch size.
TRIAL_SECONDS = 0.6
TRIAL_ROUNDS = 2
TRIAL_WARMUP = 3


@dataclass(frozen=True)
class ThreadChoice:
    """The TensorFlow baseline's thread setting at one batch size, and what each one did."""

    setting: str
    trials: dict[str, float]  # setting -> images per second in its trial; empty: none tried

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "trials": {k: round(v, 2) for k, v in self.trials.items()}}

    def __str__(self) -> str:
        if not self.trials:
            return f"{self.setting} (one core: nothing to try)"
        trials = ", ".join(f"{k} {v:.1f}" for k, v in self.trials.items())
        return f"{self.setting} (trials, img/s: {trials})"


def tensorflow_references(
    variants: tuple[str, ...], threads: int, mirror: str | None, opened: list[Any]
) -> dict[str, Any]:
    """FSA-Net's own graphs, loaded once per thread setting worth trying on `threads` cores."""
    from fsanet.engine.backends.tensorflow import thread_settings
    from fsanet.engine.pose import PoseEngine

    engines = {}
    for setting in thread_settings(threads):
        ref = PoseEngine.tensorflow_reference(
            [VARIANTS[v] for v in variants], mirror, threads, thread_setting=setting
        )
        opened.append(ref)
        engines[setting] = ref.load()
    return engines


def choose_threads(engines: dict[str, Any], feeds: list[np.ndarray], warmup: int) -> ThreadChoice:
    """Time each thread setting's engine briefly, in interleaved rounds, and keep the fastest."""
    names = list(engines)
    if len(names) == 1:
        return ThreadChoice(names[0], {})
    for name in names:  # a session's first calls set it up; not what is being compared
        time_calls(engines[name], feeds, max(1, min(warmup, TRIAL_WARMUP)), None)
    images = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    for _, i in interleave(len(names), TRIAL_ROUNDS):
        prepare, call = time_calls(engines[names[i]], feeds, None, TRIAL_SECONDS / TRIAL_ROUNDS)
        images[names[i]] += len(feeds[0]) * len(call)
        seconds[names[i]] += sum(prepare) + sum(call)
    trials = {name: images[name] / seconds[name] for name in names}
    return ThreadChoice(max(trials, key=trials.__getitem__), trials)

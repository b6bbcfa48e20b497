"""`--precision auto`: build the candidates this CPU supports, keep those within their
accuracy bound, time them interleaved on this machine, and keep the fastest.

Like TensorRT's builder timing its tactics on the target GPU, the choice is measured, not
ruled: the same engine that is fastest on an AMX Xeon can be the slowest on an AVX2 EPYC.
Timing has two stages: a short screen of every way to run each build (cores split or
shared; OpenVINO's fixed or dynamic shapes), then interleaved rounds of each build's best
(`fsanet.measure.bench.benchmark`, the same machinery as `fsanet bench`). The score is the geometric
mean of the throughputs at the tuning batch sizes, so no one size dominates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from fsanet.convert.options import BuildOptions
from fsanet.convert.pipeline import build, find_artifact
from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.core.files import atomic_path
from fsanet.core.machine import this_machine
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine
from fsanet.measure.tune.candidates import builds, describe, run_settings

SCREEN_SECONDS = 0.3  # per run setting and batch size
FINAL_SECONDS = 2.0  # per build and batch size, over the rounds
FINAL_ROUNDS = 4


@dataclass
class Candidate:
    """One build run one way, and what was measured of it."""

    backend: str
    precision: str
    layout: str
    settings: dict[str, str] = field(default_factory=dict)
    status: str = "timed"  # "timed", "screened out", "skipped: ...", "refused: ..."
    engine: str | None = None  # the artifact's directory name
    mae: float | None = None
    delta: float | None = None  # MAE moved from TensorFlow fp32's
    throughput: dict[int, float] = field(default_factory=dict)  # batch -> images/s
    latency_p50_ms: dict[int, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        run = f" [{describe(self.settings)}]" if self.settings else ""
        return f"{self.backend}/{self.precision}/{self.layout}{run}"

    @property
    def score(self) -> float | None:
        """Geometric mean of the throughputs over the tuning batch sizes."""
        if not self.throughput:
            return None
        return math.exp(sum(math.log(t) for t in self.throughput.values()) / len(self.throughput))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["throughput"] = {str(b): round(t, 1) for b, t in self.throughput.items()}
        data["latency_p50_ms"] = {str(b): round(t, 3) for b, t in self.latency_p50_ms.items()}
        data["score"] = round(self.score, 1) if self.score is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["throughput"] = {int(b): t for b, t in data["throughput"].items()}
        values["latency_p50_ms"] = {int(b): t for b, t in data["latency_p50_ms"].items()}
        return cls(**values)


@dataclass
class TuningReport:
    """Every candidate, the winner and why it won; kept in the chosen engine's manifest."""

    machine: dict[str, Any]
    batches: list[int]
    candidates: list[Candidate]
    winner: int  # index into candidates
    reason: str
    seconds: float
    created: str = ""

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.winner]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "batches": self.batches,
            "candidates": [c.to_dict() for c in self.candidates],
            "winner": self.winner,
            "reason": self.reason,
            "seconds": round(self.seconds, 1),
            "created": self.created,
            "score": "geometric mean of images/s over the tuning batch sizes",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuningReport:
        return cls(
            data["machine"],
            list(data["batches"]),
            [Candidate.from_dict(c) for c in data["candidates"]],
            int(data["winner"]),
            data["reason"],
            float(data["seconds"]),
            data.get("created", ""),
        )

    def __str__(self) -> str:
        m = self.machine
        batches = "".join(f"{'b' + str(b) + ' img/s':>13}" for b in self.batches)
        header = f"  {'candidate':<52}{'MAE':>7}{'Δ':>8}{batches}{'score':>9}  status"
        lines = [
            f"auto: tuned on {m.get('model', '?')} ({m.get('isa_class', '?')}, "
            f"{m.get('cores', '?')} cores) in {self.seconds:.0f} s; batch "
            f"{', '.join(map(str, self.batches))}",
            header,
            "  " + "-" * (len(header) - 2),
        ]
        for i, c in enumerate(self.candidates):
            mae = f"{c.mae:7.3f}" if c.mae is not None else f"{'-':>7}"
            delta = f"{c.delta:+8.3f}" if c.delta is not None else f"{'-':>8}"
            speeds = "".join(
                f"{c.throughput[b]:13.0f}" if b in c.throughput else f"{'-':>13}"
                for b in self.batches
            )
            score = f"{c.score:9.0f}" if c.score is not None else f"{'-':>9}"
            mark = "*" if i == self.winner else " "
            lines.append(f"{mark} {c.label:<52}{mae}{delta}{speeds}{score}  {c.status}")
        lines += ["", f"chosen: {self.chosen.label}: {self.reason}"]
        return "\n".join(lines)


def tune(options: BuildOptions, mirror: str | None = None, force: bool = False) -> Artifact:
    """The fastest accurate engine for this machine, tuned once and cached (the key holds
    the sources, options and machine); `force` tunes again."""
    if not force and (cached := find_artifact(options)) is not None:
        return cached
    start = time.perf_counter()
    machine = this_machine()
    candidates: list[Candidate] = []
    artifacts: dict[int, Artifact] = {}  # candidate index -> its build
    todo = builds(options, machine)
    for item in progress.bar(todo, desc="auto: build", unit="engine"):
        o = item.options
        candidate = Candidate(item.backend, item.precision, item.layout)
        candidates.append(candidate)
        if o is None:
            candidate.status = f"skipped: {item.skipped}"
            continue
        try:
            artifact = build(o, mirror)  # candidates are cached per machine; `force` re-tunes
        except FsanetError as e:  # refused: outside its bound, or not run as labelled
            candidate.status = f"refused: {e}"
            continue
        accuracy = artifact.manifest.extra["accuracy"]
        candidate.mae, candidate.delta = accuracy["mae"], accuracy["delta"]
        candidate.engine = artifact.name
        artifacts[len(candidates) - 1] = artifact
    if not artifacts:
        raise FsanetError("auto: no candidate engine could be built here; see `fsanet build`")
    finalists = _screen(candidates, artifacts, options.tune_batches, machine.cores, mirror)
    _final(finalists, candidates, artifacts, options.tune_batches, machine.cores, mirror)
    timed = [i for i, c in enumerate(candidates) if c.status == "timed"]
    ranked = sorted(timed, key=lambda i: candidates[i].score or 0.0, reverse=True)
    winner = ranked[0]
    report = TuningReport(
        machine.to_dict(),
        list(options.tune_batches),
        candidates,
        winner,
        _reason(candidates, ranked),
        time.perf_counter() - start,
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    return _write(options, artifacts[winner], candidates[winner].settings, report)


def _screen(
    candidates: list[Candidate],
    artifacts: dict[int, Artifact],
    batches: tuple[int, ...],
    threads: int,
    mirror: str | None,
) -> list[int]:
    """Time every run setting of every build briefly; each build keeps its best setting.
    The other settings stay in the table as screened out."""
    from fsanet.measure.bench import benchmark

    finalists = []
    for index, artifact in progress.bar(list(artifacts.items()), desc="auto: screen"):
        base = candidates[index]
        trials = []
        for settings in run_settings(artifact.manifest.backend, threads):
            trial = dataclasses.replace(
                base, settings=settings, status="screened out", throughput={}, latency_p50_ms={}
            )
            trials.append(trial)
        engines = [_open(artifact, trial, threads) for trial in trials]
        try:
            report = benchmark(
                engines, batches, duration=SCREEN_SECONDS, rounds=1, warmup=5, peak=False,
                threads=threads, mirror=mirror,
            )  # fmt: skip
        finally:
            for engine in engines:
                engine.close()
        for trial, engine in zip(trials, engines, strict=True):
            _record(trial, report, engine.name)
        best = max(trials, key=lambda t: t.score or 0.0)
        base.settings = best.settings
        candidates += [t for t in trials if t is not best]
        finalists.append(index)
    return finalists


def _final(
    finalists: list[int],
    candidates: list[Candidate],
    artifacts: dict[int, Artifact],
    batches: tuple[int, ...],
    threads: int,
    mirror: str | None,
) -> None:
    """Interleaved rounds of every build's best setting: the numbers the choice rests on."""
    from fsanet.measure.bench import benchmark

    engines = [_open(artifacts[i], candidates[i], threads) for i in finalists]
    try:
        report = benchmark(
            engines, batches, duration=FINAL_SECONDS, rounds=FINAL_ROUNDS, warmup=10,
            peak=False, threads=threads, mirror=mirror,
        )  # fmt: skip
    finally:
        for engine in engines:
            engine.close()
    for index, engine in zip(finalists, engines, strict=True):
        candidates[index].throughput.clear()
        _record(candidates[index], report, engine.name)


def _open(artifact: Artifact, candidate: Candidate, threads: int) -> PoseEngine:
    engine = PoseEngine.from_artifact(artifact, threads, **candidate.settings).load()
    engine.name = candidate.label  # unique in a benchmark report
    return engine


def _record(candidate: Candidate, report: Any, name: str) -> None:
    for result in report.results:
        if result.name == name:
            candidate.throughput[result.batch] = result.throughput
            candidate.latency_p50_ms[result.batch] = result.latency.p50


def _reason(candidates: list[Candidate], ranked: list[int]) -> str:
    best = candidates[ranked[0]]
    text = (
        f"the highest score ({best.score:.0f}) of {len(ranked)} accurate builds timed "
        f"interleaved here"
    )
    if len(ranked) > 1:
        second = candidates[ranked[1]]
        gain = 100 * (best.score / second.score - 1)  # type: ignore[operator]
        text += f"; {gain:.0f}% above the next, {second.label}"
    return text


def _write(
    options: BuildOptions, winner: Artifact, settings: dict[str, str], report: TuningReport
) -> Artifact:
    """The chosen engine's files under the auto key, its manifest saying how it was chosen."""
    final = options.artifact_dir()
    with atomic_path(final) as tmp:
        shutil.copytree(winner.path, tmp)
        manifest = dataclasses.replace(
            winner.manifest,
            key=options.key(),
            runtime={**winner.manifest.runtime, **settings},
            extra={**winner.manifest.extra, "tuning": report.to_dict(), "tuned_from": winner.name},
        )
        Artifact(tmp, manifest).write_manifest()
    return Artifact.load(final)

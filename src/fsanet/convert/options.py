"""What to build: `BuildOptions`, checked whenever they are made, and the cache key that
names the artifact they build."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsanet.assets.zoo import FUSION, VARIANTS, resolve_variants
from fsanet.convert.precision import (
    CALIBRATION_METHODS,
    PRECISIONS,
    check_supported,
    get_precision,
    int8_scheme_names,
)
from fsanet.core.errors import FsanetError
from fsanet.core.files import home_dir
from fsanet.core.machine import this_machine
from fsanet.engine.artifact import FORMAT
from fsanet.engine.backends import ENGINE_BACKENDS
from fsanet.engine.backends.base import CORE_MODES, SHAPE_MODES
from fsanet.engine.tta import NONE, check_mode

# Bumped whenever the build pipeline changes what it writes, so cached engines are rebuilt.
BUILDER_VERSION = 5
DEFAULT_OPSET = 17
DEFAULT_CALIBRATION_SIZE = 200
AUTO = "auto"  # --precision auto: measure the candidates here, keep the fastest accurate one
DEFAULT_TUNE_BATCHES = (1, 32)


@dataclass(frozen=True)
class BuildOptions:
    """What to build. `batch_size` matters only for a fixed-batch engine; the calibration
    settings only for precisions that calibrate (fp16 range checks, int8). `layout` picks the
    graph layout passes ("plain" or "stacked"); `cores` and `shapes` how the runner uses the
    machine (see fsanet.engine.backends.base.Runner). precision="auto" tunes all of these on this
    machine at `tune_batches` (fsanet.measure.tune).

    The values are checked however the options are made (`create`, the constructor,
    `dataclasses.replace`); `create` also takes the user's spellings."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    backend: str = "onnxruntime"
    precision: str = "fp32"
    dynamic_batch: bool = True
    batch_size: int = 1
    opset: int = DEFAULT_OPSET
    optimize: bool = True  # graph passes (loop-free capsule, constant folding, dead nodes)
    fuse: bool = True  # one graph for several variants
    calibration_method: str = "minmax"
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    layout: str = "plain"
    cores: str = "split"
    shapes: str = "fixed"  # OpenVINO only
    tune_batches: tuple[int, ...] = DEFAULT_TUNE_BATCHES  # precision="auto" only
    int8_scheme: str = "cpu"  # "cpu": this CPU's settings in order, measured; or one name
    tta: str = NONE  # "flip": crop and mirror image averaged inside the graph (fsanet.engine.tta)

    @classmethod
    def create(
        cls,
        models: list[str] | tuple[str, ...] | None = None,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        dynamic_batch: bool = True,
        batch_size: int = 1,
        opset: int = DEFAULT_OPSET,
        optimize: bool = True,
        fuse: bool = True,
        calibration_method: str = "minmax",
        calibration_size: int = DEFAULT_CALIBRATION_SIZE,
        layout: str = "plain",
        cores: str = "split",
        shapes: str = "fixed",
        tune_batches: tuple[int, ...] | list[int] = DEFAULT_TUNE_BATCHES,
        int8_scheme: str = "cpu",
        tta: str = NONE,
    ) -> BuildOptions:
        """Options from the user's spellings: model names (`fusion`: all three variants) and
        any spelling of the precision, made canonical; the constructor checks the rest."""
        variants = resolve_variants(models)
        return cls(
            variants=tuple(v.name for v in variants),
            backend=backend,
            precision=_canonical_precision(precision),
            dynamic_batch=dynamic_batch,
            batch_size=batch_size,
            opset=opset,
            optimize=optimize,
            fuse=fuse and len(variants) > 1,
            calibration_method=calibration_method,
            calibration_size=calibration_size,
            layout=layout if optimize else "plain",
            cores=cores,
            shapes=shapes,
            tune_batches=tuple(sorted(set(tune_batches))),
            int8_scheme=int8_scheme,
            tta=tta,
        )

    def __post_init__(self) -> None:
        """Refuse what no engine can be built from; a precision this CPU cannot run
        natively is refused here, before anything is built."""
        from fsanet.convert.layout import LAYOUTS  # imports onnx

        if self.backend not in ENGINE_BACKENDS:
            raise FsanetError(
                f"cannot build engines for backend '{self.backend}': choose "
                f"{', '.join(ENGINE_BACKENDS)}"
            )
        if self.batch_size < 1:
            raise FsanetError(f"batch size must be at least 1, got {self.batch_size}")
        for name, value, allowed in (
            ("layout", self.layout, LAYOUTS),
            ("cores", self.cores, CORE_MODES),
            ("shapes", self.shapes, SHAPE_MODES),
        ):
            if value not in allowed:
                raise FsanetError(f"unknown {name} '{value}': choose {', '.join(allowed)}")
        if not self.tune_batches or any(b < 1 for b in self.tune_batches):
            raise FsanetError(
                f"tuning batch sizes must be at least 1, got {list(self.tune_batches)}"
            )
        chosen = None  # a precision (None: auto, its candidates' own)
        if self.precision != AUTO:
            chosen = get_precision(self.precision, self.backend)
            if chosen.name != self.precision:
                raise FsanetError(
                    f"precision '{self.precision}' is spelled {chosen.name} here "
                    "(BuildOptions.create takes every spelling)"
                )
        if (chosen is None or chosen.needs_calibration) and self.calibration_size < 1:
            name = "auto (its int8 candidates)" if chosen is None else chosen.name
            raise FsanetError(
                f"{name} needs calibration data: give --calibration-size of at least 1"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise FsanetError(
                f"unknown calibration method '{self.calibration_method}': choose "
                f"{', '.join(CALIBRATION_METHODS)}"
            )
        if chosen is not None:
            check_supported(chosen.name, self.backend, this_machine())
        schemes = ("cpu", *int8_scheme_names(self.backend))
        if self.int8_scheme not in schemes:
            raise FsanetError(
                f"unknown int8 scheme '{self.int8_scheme}' for {self.backend}: choose "
                f"{', '.join(schemes)}"
            )
        check_mode(self.tta)
        if not self.variants or any(v not in VARIANTS for v in self.variants):
            raise FsanetError(
                f"variants must be some of {', '.join(VARIANTS)}, got {list(self.variants)} "
                "(BuildOptions.create takes model names such as fusion)"
            )

    @property
    def fixed_batch(self) -> int | None:
        return None if self.dynamic_batch else self.batch_size

    @property
    def calibrates(self) -> bool:
        return self.precision == AUTO or PRECISIONS[self.precision].needs_calibration

    def runtime(self) -> dict[str, str]:
        """The runner settings recorded in the manifest."""
        return {
            "cores": self.cores,
            **({"shapes": self.shapes} if self.backend == "openvino" else {}),
        }

    def key(self) -> str:
        """A digest of everything that determines the artifact's contents.

        Reduced precisions and tuned choices depend on the CPU (int8 settings, what was
        measured fastest), so the machine is part of their key; plain fp32 is not."""
        payload: dict[str, Any] = {
            "format": FORMAT,
            "builder": BUILDER_VERSION,
            "sources": {v: VARIANTS[v].file.sha256 for v in self.variants},
            "batch": self.fixed_batch,
            "opset": self.opset,
            "optimize": self.optimize,
            "fuse": self.fuse,
        }
        if self.precision == AUTO:
            machine = this_machine()
            payload["auto"] = [list(self.tune_batches), machine.isa_class, machine.model]
            payload["cores"] = machine.cores
        else:
            payload.update(
                backend=self.backend, precision=self.precision, layout=self.layout, **self.runtime()
            )
            if PRECISIONS[self.precision].cpu_specific:
                payload["isa"] = this_machine().isa_class
        if self.calibrates:
            payload["calibration"] = [self.calibration_method, self.calibration_size]
        if self.int8_scheme != "cpu":
            payload["int8_scheme"] = self.int8_scheme
        if self.tta != NONE:
            payload["tta"] = self.tta
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def artifact_dir(self) -> Path:
        models = FUSION if set(self.variants) == set(VARIANTS) else "+".join(self.variants)
        batch = "dyn" if self.dynamic_batch else f"b{self.batch_size}"
        engine = AUTO if self.precision == AUTO else f"{self.backend}-{self.precision}"
        tta = "" if self.tta == NONE else f"-{self.tta}"
        name = f"{models}-{engine}-{batch}{tta}-{self.key()}"
        return home_dir() / "engines" / name


def _canonical_precision(name: str) -> str:
    """A precision's canonical name (or `auto`) for any of its spellings; an unknown name is
    left as it is, for the constructor to refuse in its turn."""
    if name.lower() == AUTO:
        return AUTO
    try:
        return get_precision(name).name
    except FsanetError:
        return name

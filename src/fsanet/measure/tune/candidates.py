"""The engines `--precision auto` considers on this machine.

A candidate is a build (backend x precision x graph layout) and a way to run it (how the
cores are used; for OpenVINO, fixed or dynamic compiled shapes). Builds are expensive and
checked for accuracy; run settings are cheap to try on the same files. A build this CPU
cannot run as labelled is listed with the reason, not built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fsanet.convert.options import BuildOptions
from fsanet.convert.precision import PRECISIONS, unsupported
from fsanet.core.errors import FsanetError
from fsanet.core.machine import Machine
from fsanet.engine.backends import ENGINE_BACKENDS
from fsanet.engine.backends.base import CORE_MODES, SHAPE_MODES

# (backend, precision, layout): each backend with each precision it runs, in each layout
# tuned for that precision (the registry, fsanet.convert.precision).
BUILDS = tuple(
    (backend, precision.name, layout)
    for backend in ENGINE_BACKENDS
    for precision in PRECISIONS.values()
    if backend in precision.backends
    for layout in precision.tune_layouts
)


@dataclass(frozen=True)
class Build:
    """One engine build: its options, or why it is not made on this machine."""

    backend: str
    precision: str
    layout: str
    options: BuildOptions | None = None  # None where skipped
    skipped: str | None = None  # the reason, where this CPU cannot run it as labelled


def builds(base: BuildOptions, machine: Machine) -> list[Build]:
    """Every build to try, from the user's `auto` options (variants, batch mode,
    calibration) with each backend, precision and layout filled in."""
    out = []
    for backend, precision, layout in BUILDS:
        if not base.optimize and layout != "plain":
            continue  # the layout passes run on the optimised graph only
        try:
            reason = unsupported(precision, backend, machine)
        except FsanetError as e:  # the backend is not installed
            reason = str(e)
        out.append(_build(base, backend, precision, layout, reason))
    return out


def _build(
    base: BuildOptions, backend: str, precision: str, layout: str, reason: str | None
) -> Build:
    """The build, with its options where it can run here (options check themselves)."""
    if reason is not None:
        return Build(backend, precision, layout, skipped=reason)
    try:
        options = dataclasses.replace(
            base, backend=backend, precision=precision, layout=layout, cores="split",
            shapes="fixed",
        )  # fmt: skip
    except FsanetError as e:  # e.g. an --int8-scheme that only the other backend has
        return Build(backend, precision, layout, skipped=str(e))
    return Build(backend, precision, layout, options)


def run_settings(backend: str, threads: int) -> list[dict[str, str]]:
    """The runner settings to time for one build (see fsanet.engine.backends.base.Runner)."""
    cores = CORE_MODES if threads > 1 else ("split",)
    if backend != "openvino":
        return [{"cores": c} for c in cores]
    return [{"cores": c, "shapes": s} for c in cores for s in SHAPE_MODES]


def describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())

"""Plots of a benchmark: throughput against batch size, and the latency distributions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsanet.core.errors import FsanetError

if TYPE_CHECKING:
    from fsanet.measure.bench.report import BenchReport


def _formats() -> set[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return set(FigureCanvasAgg(Figure()).get_supported_filetypes())


def check_plot_path(path: str | Path) -> Path:
    """Fail before a long run if the plot could not be written there."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in _formats():
        raise FsanetError(f"cannot write a plot to {path}: use a .png, .svg or .pdf file name")
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise FsanetError(f"cannot write the plot to {path}: it is a directory")
    if not parent.is_dir():
        raise FsanetError(f"cannot write the plot to {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise FsanetError(f"cannot write the plot to {path}: permission denied")
    return path


def plot_report(report: BenchReport, path: str | Path) -> Path:
    """Throughput vs batch size (bars: min-max over rounds) and latency per call."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    path = check_plot_path(path)
    batches = list(report.settings.batches)
    labels = report.labels
    compared = [label for label in labels if report.result(label, batches[0]).ratio]
    panels = 3 if compared else 2
    fig = Figure(figsize=(5.5 * panels, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    left, right = axes[0], axes[-1]
    if compared:
        _plot_ratios(report, axes[1], compared, batches)
    width = 0.8 / max(1, len(labels))
    for k, label in enumerate(labels):
        rows = [report.result(label, b) for b in batches]
        y = [r.throughput for r in rows]
        low = [r.throughput - min(r.round_throughput) for r in rows]
        high = [max(r.round_throughput) - r.throughput for r in rows]
        left.errorbar(batches, y, yerr=[low, high], marker="o", capsize=3, label=label)
        positions = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(batches))]
        box = right.boxplot(
            [r.samples * 1e3 for r in rows],
            positions=positions,
            widths=width * 0.9,
            whis=(1, 99),
            showfliers=False,
            patch_artist=True,
            medianprops={"color": "black"},
        )
        color = f"C{k}"
        for patch in box["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        right.plot([], [], color=color, linewidth=6, alpha=0.6, label=label)
    _batch_axis(left, batches, "images / s", "throughput (bars: min-max over rounds)", 8)
    right.set_xticks(range(len(batches)), [str(b) for b in batches])
    right.set_yscale("log")
    right.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labels in any range
    right.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 10, not 10^1
    right.yaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("batch size")
    right.set_ylabel("ms per call")
    right.set_title("latency (box: p25-p75, whiskers: p1-p99)")
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=8)
    s = report.settings
    fig.suptitle(
        f"{report.machine['model']} ({report.machine['isa_class']}), {s.threads} "
        f"thread{'s' * (s.threads > 1)} per engine",
        fontsize=10,
    )
    try:
        fig.savefig(path)
    except OSError as e:
        raise FsanetError(f"cannot write the plot to {path}: {e.strerror or e}") from e
    return path


def _plot_ratios(report: BenchReport, ax: Any, labels: list[str], batches: list[int]) -> None:
    """Each engine's throughput over its reference's, with the min-max over rounds."""
    for k, label in enumerate(report.labels):
        if label not in labels:
            continue
        ratios = [report.result(label, b).ratio for b in batches]
        y = [r.value for r in ratios if r]
        low = [r.value - r.low for r in ratios if r]
        high = [r.high - r.value for r in ratios if r]
        reference = report.result(label, batches[0]).reference
        ax.errorbar(
            batches, y, yerr=[low, high], marker="o", capsize=3, color=f"C{k}",
            label=f"{label} / {reference}",
        )  # fmt: skip
    ax.axhline(1.0, color="grey", linewidth=1)
    title = "throughput / reference's (bars: min-max over rounds)"
    _batch_axis(ax, batches, "throughput ratio", title, 7)


def _batch_axis(ax: Any, batches: list[int], ylabel: str, title: str, legend_size: int) -> None:
    """Batch sizes on a log2 axis, the y axis from 0: the throughput and ratio panels."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)

"""`fsanet bench`: throughput, latency percentiles, interleaved ratios and the roofline."""

from fsanet.convert.flops import FlopCount, count_flops
from fsanet.measure.bench.core import (
    ALL,
    DEFAULT_BATCHES,
    DEFAULT_ITERATIONS,
    benchmark,
    parse_batches,
)
from fsanet.measure.bench.peak import Peak, machine_info, measure_peak
from fsanet.measure.bench.plot import check_plot_path
from fsanet.measure.bench.report import BenchReport, BenchResult, BenchSettings
from fsanet.measure.bench.stats import LatencyStats, Ratio
from fsanet.measure.bench.timing import interleave

__all__ = [
    "ALL",
    "DEFAULT_BATCHES",
    "DEFAULT_ITERATIONS",
    "BenchReport",
    "BenchResult",
    "BenchSettings",
    "FlopCount",
    "LatencyStats",
    "Peak",
    "Ratio",
    "benchmark",
    "check_plot_path",
    "count_flops",
    "interleave",
    "machine_info",
    "measure_peak",
    "parse_batches",
]

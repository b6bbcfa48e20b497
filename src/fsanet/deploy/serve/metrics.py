"""Prometheus text metrics, kept by hand: a few counters and histograms need no client library.

Every update happens on the server's event loop, so no locks are needed.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{v}"' for k, v in pairs)
    return "{" + body + "}"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    """A value read when scraped (queue depth, requests in flight)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {_number(self.read())}",
        ]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_text
        self.buckets = tuple(buckets)
        # per label set: counts per bucket (non-cumulative; the last slot is +Inf), sum
        self.counts: dict[tuple[tuple[str, str], ...], list[int]] = {}
        self.sums: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def count(self, **labels: str) -> int:
        return sum(self.counts.get(tuple(sorted(labels.items())), []))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            total = 0
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
                total += n
                le = "+Inf" if bound == float("inf") else _number(bound)
                lines.append(f"{self.name}_bucket{_labels((*key, ('le', le)))} {total}")
            lines.append(f"{self.name}_sum{_labels(key)} {_number(self.sums[key])}")
            lines.append(f"{self.name}_count{_labels(key)} {total}")
        return lines


class ServeMetrics:
    """What `GET /metrics` shows: requests by status, latency, batch sizes, queue depth."""

    def __init__(
        self,
        queue_depth: Callable[[], float],
        in_flight: Callable[[], float],
        memory_in_flight: Callable[[], float] = lambda: 0,
        memory_waiting: Callable[[], float] = lambda: 0,
        memory_peak: Callable[[], float] = lambda: 0,
        streams_open: Callable[[], float] = lambda: 0,
        memory_budget: Callable[[], float] = lambda: 0,
    ) -> None:
        self.requests = Counter("fsanet_requests_total", "HTTP requests by endpoint and status.")
        self.latency = Histogram(
            "fsanet_request_duration_seconds", "Request latency by endpoint.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "fsanet_batch_size", "Crops per engine call (dynamic batching).", BATCH_BUCKETS
        )
        self.engine_seconds = Histogram(
            "fsanet_engine_seconds", "Time of one engine call.", LATENCY_BUCKETS
        )
        self.crops = Counter("fsanet_crops_total", "Crops run through the engine.")
        self.faces = Counter("fsanet_faces_total", "Faces found by POST /v1/pose.")
        self.rejected = Counter(
            "fsanet_rejected_total",
            "Requests and connections refused by the HTTP layer before the app, by reason.",
        )
        # Streams (WS /v1/stream).
        self.streams_closed = Counter(
            "fsanet_streams_closed_total",
            "Streams ended or refused, by reason (client, idle, send_timeout, unauthorized, "
            "origin, full, protocol, unavailable, error).",
        )
        self.stream_frames = Counter("fsanet_stream_frames_total", "Stream frames answered.")
        self.stream_skipped = Counter(
            "fsanet_stream_frames_skipped_total",
            "Stream frames replaced by a newer one before they were posed.",
        )
        self.stream_errors = Counter(
            "fsanet_stream_frame_errors_total", "Stream frames refused, by status."
        )
        self.stream_latency = Histogram(
            "fsanet_stream_frame_seconds",
            "Time from a stream frame's arrival to its answer.",
            LATENCY_BUCKETS,
        )
        self._all: list[Counter | Gauge | Histogram] = [
            self.requests,
            self.latency,
            self.batch_size,
            self.engine_seconds,
            self.crops,
            self.faces,
            self.rejected,
            Gauge("fsanet_queue_depth", "Crops waiting for the engine.", queue_depth),
            Gauge("fsanet_requests_in_flight", "Requests being handled.", in_flight),
            Gauge(
                "fsanet_memory_in_flight_bytes",
                "Memory reserved by requests in flight (bodies, images, crops).",
                memory_in_flight,
            ),
            Gauge(
                "fsanet_memory_in_flight_peak_bytes",
                "The most memory reserved at once since the start (at most the budget).",
                memory_peak,
            ),
            Gauge(
                "fsanet_memory_waiting_requests",
                "Requests waiting for the memory budget.",
                memory_waiting,
            ),
            Gauge("fsanet_memory_budget_bytes", "The in-flight memory budget.", memory_budget),
            Gauge("fsanet_streams_open", "Streams open (admitted).", streams_open),
            self.streams_closed,
            self.stream_frames,
            self.stream_skipped,
            self.stream_errors,
            self.stream_latency,
        ]

    def render(self) -> str:
        return "\n".join(line for metric in self._all for line in metric.render()) + "\n"

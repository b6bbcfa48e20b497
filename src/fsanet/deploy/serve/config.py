"""What the service may be asked and how it is set up: `Limits` per request, `ServeConfig`
for the server, and the most each may be set to.

This module imports no web framework and no OpenCV, so the CLI reads its defaults cheaply.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fsanet.core.errors import FsanetError
from fsanet.deploy.serve.budget import MB, default_inflight_mb, machine_memory
from fsanet.deploy.serve.protocol import default_max_connections
from fsanet.faces.options import MAX_FACES, MAX_PIXELS, VideoOptions


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = MAX_PIXELS  # ~ 7300 x 5500; larger images are refused before decoding
    max_crops: int = MAX_FACES  # crops per request to /v1/pose/crops, faces per photo
    max_queue: int = 4096  # crops waiting for the engine before requests get 503
    body_timeout_s: float = 10.0  # reading the body (slow or stalled clients)
    request_timeout_s: float = 30.0  # waiting for the engine

    def __post_init__(self) -> None:
        problems = not_positive(
            ("body limit", self.max_body_bytes),
            ("pixel limit", self.max_pixels),
            ("crops per request", self.max_crops),
            ("queue limit", self.max_queue),
            ("body timeout", self.body_timeout_s),
            ("request timeout", self.request_timeout_s),
        )
        problems += over_maximum(
            self, "max_body_bytes", "max_pixels", "max_crops", "max_queue", "body_timeout_s",
            "request_timeout_s",
        )  # fmt: skip
        if problems:
            raise FsanetError("; ".join(problems))


# The most each limit of `Limits` and `ServeConfig` may be set to: past these a value is a
# typo that switches the limit off (ServeConfig.max_inflight_mb: the machine's memory).
MAXIMA: dict[str, float] = {
    "max_body_bytes": 1 << 30,  # 1 GiB
    "max_pixels": 1_000_000_000,  # under OpenCV's own decoding limit (2**30)
    "max_crops": 4096,
    "max_queue": 65536,
    "body_timeout_s": 3600,
    "request_timeout_s": 3600,
    "max_batch": 4096,
    "max_wait_ms": 10_000,
    "max_waiting": 65536,
    "max_connections": 65536,
    "header_timeout_s": 600,
    "keep_alive_s": 3600,
    "tls_handshake_timeout_s": 60,  # asyncio's default
    "max_header_bytes": 1 << 20,  # 1 MiB
    "graceful_timeout_s": 3600,
    "rate_limit": 1e6,
    "rate_burst": 1e6,
    "max_streams": 4096,
    "stream_idle_s": 3600,
    "stream_send_timeout_s": 3600,
}


def maximum(name: str) -> float:
    """The most a field of `Limits` or `ServeConfig` may be set to."""
    if name == "max_inflight_mb":
        total = machine_memory()
        return math.inf if total is None else float(total // MB)
    return MAXIMA[name]


def over_maximum(settings: object, *fields: str) -> list[str]:
    """A message for each field of `settings` above its maximum (None: not set)."""
    problems = []
    for name in fields:
        value, most = getattr(settings, name), maximum(name)
        if value is not None and value > most:
            problems.append(f"{name} must be at most {_show(most)}, got {_show(value)}")
    return problems


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def not_positive(*fields: tuple[str, float]) -> list[str]:
    """A message for each (name, value) that is not a finite number above 0. `not value > 0`
    also catches NaN, which every comparison lets through otherwise."""
    return [
        f"{name} must be positive, got {value:g}"
        for name, value in fields
        if not (value > 0 and math.isfinite(value))
    ]


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    graceful_timeout_s: int = 30  # seconds; how long shutdown waits for requests in flight
    access_log: bool = False
    # Memory held by requests in flight (bodies, decoded images, crops); past it, requests
    # wait (at most `max_waiting` of them, at most the request timeout) or get 503.
    max_inflight_mb: float = field(default_factory=default_inflight_mb)
    max_waiting: int = 64
    # Connections: past `max_connections` the oldest idle one is closed; headers must arrive
    # within `header_timeout_s` and fit in `max_header_bytes` (431); idle keep-alive
    # connections are closed after `keep_alive_s`.
    max_connections: int = field(default_factory=default_max_connections)
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_header_bytes: int = 64 * 1024
    # TLS: a client must finish its handshake within this; until then its socket counts
    # against `max_connections` and is the first closed when they run out.
    tls_handshake_timeout_s: float = 5.0
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses, networks or
    # "*"); from anyone else they are ignored, so the rate limit keys on the real peer.
    forwarded_allow_ips: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)  # bearer token; None: no auth
    docs: bool = False  # /docs and /redoc (Swagger UI loads its assets from a CDN)
    ui: bool = True  # the live page at / (photos, the camera); --no-ui leaves it out
    # Per client address: `rate_limit` requests per second on average, `rate_burst` at once
    # (default: one second's worth); past it 429 with Retry-After. None: no limit.
    rate_limit: float | None = None
    rate_burst: int | None = None
    # TLS (HTTPS) through uvicorn: a PEM certificate chain and its private key (the key may
    # also be in the certificate file).
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Streams (WS /v1/stream): at most `max_streams` at once; one that sends no frame for
    # `stream_idle_s`, or does not read its answers for `stream_send_timeout_s`, is closed.
    max_streams: int = 16
    stream_idle_s: float = 30.0
    stream_send_timeout_s: float = 10.0
    # Pages (origins) besides the server's own that may open streams; "*": any.
    allowed_origins: tuple[str, ...] = ()
    # How a stream runs unless it asks otherwise (detect every K-th frame, size, scene cuts).
    video: VideoOptions = field(default_factory=VideoOptions)

    def __post_init__(self) -> None:
        problems = not_positive(  # Limits checks its own fields
            ("max batch", self.max_batch),
            ("in-flight memory", self.max_inflight_mb),
            ("waiting requests", self.max_waiting),
            ("max connections", self.max_connections),
            ("header timeout", self.header_timeout_s),
            ("keep-alive timeout", self.keep_alive_s),
            ("header size limit", self.max_header_bytes),
            ("TLS handshake timeout", self.tls_handshake_timeout_s),
            ("max streams", self.max_streams),
            ("stream idle timeout", self.stream_idle_s),
            ("stream send timeout", self.stream_send_timeout_s),
        )
        problems += over_maximum(
            self, "max_batch", "max_wait_ms", "graceful_timeout_s", "max_inflight_mb",
            "max_waiting", "max_connections", "header_timeout_s", "keep_alive_s",
            "max_header_bytes", "tls_handshake_timeout_s", "rate_limit", "rate_burst",
            "max_streams", "stream_idle_s", "stream_send_timeout_s",
        )  # fmt: skip
        problems += _bad_origins(self.allowed_origins)
        problems += [
            f"forwarded_allow_ips: {x!r} is not an IP address or network"
            for x in self.forwarded_allow_ips
            if not _is_network(x)
        ]
        if not (self.max_wait_ms >= 0 and math.isfinite(self.max_wait_ms)):
            problems.append(f"max wait must be 0 or more, got {self.max_wait_ms:g} ms")
        if not (self.graceful_timeout_s >= 0 and math.isfinite(self.graceful_timeout_s)):
            problems.append(f"graceful timeout must be 0 or more, got {self.graceful_timeout_s:g}")
        if self.rate_limit is not None and not (
            self.rate_limit > 0 and math.isfinite(self.rate_limit)
        ):
            problems.append(f"rate limit must be positive, got {self.rate_limit:g}")
        if self.rate_burst is not None and not self.rate_burst >= 1:
            problems.append(f"rate burst must be 1 or more, got {self.rate_burst:g}")
        if self.rate_burst is not None and self.rate_limit is None:
            problems.append("a rate burst needs a rate limit")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            problems.append("a TLS key file needs a certificate file")
        if self.api_key is not None and not self.api_key:
            problems.append("the API key is empty")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must lie in [0, 65535], got {self.port}")
        if problems:
            raise FsanetError("; ".join(problems))


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(text: str) -> str:
    """`scheme://host[:port]` in canonical form (lower case, default port dropped), or "*" and
    "null" as given; ValueError for anything else."""
    text = text.strip()
    if text in ("*", "null"):
        return text
    parts = urlsplit(text.lower())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin (expected http(s)://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{text!r} is not an origin: no path, query or user")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _bad_origins(origins: tuple[str, ...]) -> list[str]:
    problems = []
    for text in origins:
        try:
            if origin(text) != text:
                problems.append(f"allowed_origins: write {text!r} as {origin(text)!r}")
        except ValueError as e:
            problems.append(f"allowed_origins: {e}")
    return problems


def _is_network(text: str) -> bool:
    try:
        return text == "*" or bool(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return False

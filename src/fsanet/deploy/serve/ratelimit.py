"""A per-client request-rate limit: one token bucket per client address.

Each address may send `rate` requests per second on average and `burst` at once; past that it
gets 429 with `Retry-After` (the seconds until its next token). The probes stay open, like
with auth. Behind a reverse proxy every request comes from the proxy's address: limit there.
The buckets are bounded: full ones are dropped first (a full bucket is the same as none),
then the least recently used. Everything runs on the event loop, so no locks are needed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fsanet.deploy.serve.auth import OPEN_PATHS, send_error

MAX_CLIENTS = 65536  # buckets kept; ~200 bytes each


class TokenBuckets:
    """`take(client)`: 0 when the client may go ahead, else the seconds until it may."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        now = self.clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            self._trim(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _trim(self, now: float) -> None:
        if len(self._buckets) <= self.max_clients:
            return
        full_after = self.burst / self.rate
        for client, (_, then) in list(self._buckets.items()):
            if now - then >= full_after:
                del self._buckets[client]
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # least recently seen


class RateLimit:
    """Pure ASGI middleware: 429 with Retry-After past the client's rate."""

    def __init__(self, app: Any, buckets: TokenBuckets, count: Callable[[], None]) -> None:
        self.app, self.buckets, self.count = app, buckets, count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.buckets.take(client[0] if client else "?")
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        self.count()
        retry = {"retry-after": str(max(1, math.ceil(wait)))}
        await send_error(send, 429, "too many requests from this client", retry)

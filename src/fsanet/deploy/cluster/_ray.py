"""Ray and Ray Serve, or one line telling how to install them (the `cluster` extra)."""

from __future__ import annotations

from fsanet.core.errors import FsanetError

try:
    import ray
    from ray import serve
except ImportError as e:
    raise FsanetError(
        f"fsanet serve --ray needs the '{e.name}' package: pip install 'fsanet[cluster]'"
    ) from None

__all__ = ["ray", "serve"]

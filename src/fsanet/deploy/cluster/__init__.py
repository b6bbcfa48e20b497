"""Scale-out on Ray: `fsanet serve --ray` runs the service's engine and face detector as Ray
Serve deployments (docs/SCALING.md).

`serve_on_ray` needs the `cluster` extra (Ray) and imports it when first used; the options
here do not, so the CLI can check them without Ray.
"""

from __future__ import annotations

from typing import Any

from fsanet.deploy.cluster.config import FaceOptions, RayOptions, Replicas

__all__ = ["FaceOptions", "RayOptions", "Replicas", "serve_on_ray"]


def __getattr__(name: str) -> Any:
    if name == "serve_on_ray":  # imports Ray, or says how to install it
        from fsanet.deploy.cluster.serve import serve_on_ray

        return serve_on_ray
    raise AttributeError(f"module 'fsanet.deploy.cluster' has no attribute '{name}'")

"""`fsanet serve --ray`: the HTTP service of `fsanet serve`, its engine and detector on Ray.

The front is this process: the same FastAPI app, HTTP protocol, limits, errors and metrics
as single-process `fsanet serve` (fsanet.deploy.serve.app), so a client cannot tell them apart; its
engine and detector calls go through DeploymentHandles to two Ray Serve deployments that
scale separately (fsanet.deploy.cluster.deployments). Crops are batched on the front as in one
process, and each batch is one handle call (a call costs the front ~1 ms of CPU: too much
to pay per request), split over the pose replicas so that all of them work at once; up to
two calls per replica are in flight, and a replica's `@serve.batch` runs the smaller calls
that meet there together. Images go to the detection replicas several per call under load.

A replica that dies fails the calls it held: those requests get a 503 (Retry-After: 1), and
Ray Serve starts a new replica from the same object-store files. A call that gets no answer
within the request timeout gets the same 503 as an overloaded single-process server.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from typing import Any

import numpy as np
from grpc.aio import AioRpcError  # Ray's own dependency: what its gRPC transport raises

from fsanet.core.errors import FsanetError
from fsanet.deploy.cluster._ray import ray, serve
from fsanet.deploy.cluster.config import (
    DETECT_TARGET,
    POSE_TARGET,
    FaceOptions,
    RayOptions,
    Replicas,
)
from fsanet.deploy.cluster.deployments import DetectDeployment, PoseDeployment, Refusal
from fsanet.deploy.cluster.gather import Gather
from fsanet.deploy.cluster.local import connected
from fsanet.deploy.cluster.transfer import pack, pack_artifact
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.limits import HttpError
from fsanet.deploy.serve.server import check_tls
from fsanet.deploy.serve.server import serve as serve_http
from fsanet.deploy.serve.service import Detected, Offload
from fsanet.engine.artifact import Artifact
from fsanet.engine.backends.base import available_cpus
from fsanet.engine.pose import PoseEngine

RETRY = {"Retry-After": "1"}
BATCHES_PER_REPLICA = 2  # one running, one waiting: the replica never idles between calls
REPLICA_ENV = {
    # Replicas run their code on Ray's own event loop rather than a second one: one thread
    # hop less per call (~0.5-1 ms of CPU here); the heavy work runs on executor threads.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # Calls come over gRPC (see _direct), whose replicas take 4 MB messages by default: a
    # request's 256 float32 crops are 12.6 MB. The service's own limits bound the size.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}


def local_cpus(options: RayOptions) -> int:
    """CPUs a local cluster declares: the machine's, or what the replicas ask for if more
    (pose and detection replicas share the cores: crops load one, photos the other)."""
    cores = available_cpus()
    most = options.replicas.max or cores
    return max(cores, math.ceil(2 * most * options.replica_cpus))


def serve_on_ray(
    artifact: Artifact,
    config: ServeConfig,
    options: RayOptions,
    faces: FaceOptions | None,
    mirror: str | None = None,
) -> None:
    """Serve `artifact` over HTTP until SIGINT/SIGTERM, with its engine and (unless `faces`
    is None) YuNet in Ray Serve replicas; the applications are deleted on the way out."""
    check_tls(config)  # before Ray starts: a bad certificate fails at once
    with connected(options.address, local_cpus(options)) as address:
        try:
            remote, lines = _deploy(artifact, config, options, faces, mirror)
            for line in [f"fsanet serve: Ray cluster {address}", *lines]:
                print(line, file=sys.stderr, flush=True)
            # Never loaded here: the routes read its name and variants, as in one process.
            engine = PoseEngine.from_artifact(artifact)
            serve_http(engine, config, None, remote)
        finally:
            if options.address:  # a local cluster stops as a whole
                _delete([f"{options.app}-pose"] + ([f"{options.app}-detect"] if faces else []))


def _delete(names: list[str], timeout_s: float = 30.0) -> None:
    """Remove this server's applications from a shared cluster, waiting at most `timeout_s`
    (a cluster that is gone, e.g. stopped by the same Ctrl-C, never answers)."""

    def delete() -> None:
        for name in names:
            try:
                serve.delete(name)
            except Exception as e:  # already gone, or the cluster is
                print(f"fsanet serve: could not delete {name}: {e}", file=sys.stderr)

    worker = threading.Thread(target=delete, name="fsanet-delete", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        print(f"fsanet serve: could not delete {', '.join(names)} in time", file=sys.stderr)


def _deploy(
    artifact: Artifact,
    config: ServeConfig,
    options: RayOptions,
    faces: FaceOptions | None,
    mirror: str | None,
) -> tuple[Offload, list[str]]:
    serve.start(proxy_location="Disabled")  # the front is this process: no Ray HTTP proxy
    package = pack_artifact(artifact)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    most = options.replicas.max or max(options.replicas.min, int(cpus // options.replica_cpus))
    actor = {"num_cpus": options.replica_cpus, "runtime_env": {"env_vars": REPLICA_ENV}}
    # Calls the front may have in flight to each deployment. A replica that holds as many
    # never refuses one: a refused call is retried by Ray's router, at a cost of front CPU.
    slots = BATCHES_PER_REPLICA * most
    batch = front_batch(config.max_batch, most)  # crops per call, and per replica batch
    pose = PoseDeployment.options(
        ray_actor_options={
            **actor,
            "num_gpus": options.pose_gpus,
            "resources": options.pose_resources,
        },
        # (at least `batch`: else Ray warns that @serve.batch could never fill)
        max_ongoing_requests=max(batch, slots),
        **_scaling(options.replicas, most, POSE_TARGET),
    ).bind(ray.put(package), options.threads, batch, config.max_wait_ms, config.max_batch)
    targets = [serve.RunTarget(pose, name=f"{options.app}-pose", route_prefix=None)]
    if faces is not None:
        from fsanet.assets.fetch import fetch
        from fsanet.assets.zoo import YUNET

        yunet = fetch(YUNET, mirror)
        detect = DetectDeployment.options(
            ray_actor_options={**actor, "resources": options.detect_resources},
            max_ongoing_requests=slots,
            **_scaling(options.replicas, most, DETECT_TARGET),
        ).bind(ray.put(pack(yunet.parent, [yunet.name])), faces, config.limits, options.threads)
        targets.append(serve.RunTarget(detect, name=f"{options.app}-detect", route_prefix=None))
    try:
        handles = serve.run_many(targets)  # waits until every replica has loaded
    except RuntimeError as e:  # a replica failed to start: its error is the last line
        raise FsanetError(f"the Ray deployment failed: {_last_line(e)}") from None
    timeout = config.limits.request_timeout_s
    handles = [_direct(handle) for handle in handles]
    remote = _Remote(handles[0], handles[1] if faces is not None else None, timeout, slots)
    offload = Offload(
        remote.infer,
        remote.detect if faces is not None else None,
        concurrency=slots,
        max_batch=batch,
    )
    each = f"{options.replica_cpus:g} CPU, {options.threads} thread(s) each"
    lines = [
        f"  replicas: pose {options.replicas}, detect "
        f"{options.replicas if faces else 'off'} ({each}); engine {package.size / 1e6:.1f} MB"
        " sent through the object store, sha256-checked on arrival",
    ]
    return offload, lines


def front_batch(max_batch: int, replicas: int) -> int:
    """Crops per call from the front, and per engine call on a replica: `max_batch` split
    over the pose replicas, so that the crops of a closed loop of clients keep every replica
    busy (32 clients, 32 crops, 2 replicas: 16 each) rather than one full batch at a time.
    A full call runs at once on its replica; smaller ones wait there up to --max-wait-ms
    (@serve.batch) to run together. At least 8 crops (or `max_batch`): each call costs the
    front ~1 ms of CPU."""
    return min(max_batch, max(8, math.ceil(max_batch / replicas)))


def compact(crops: np.ndarray) -> np.ndarray:
    """Checked float32 crops as uint8 when that loses nothing (whole pixel values, as
    decoded images give): a quarter of the bytes over the network to a pose replica (16
    crops: 197 KB instead of 786 KB). The engine takes either. On one machine the CPU it
    saves was within the noise of the measurement."""
    if crops.dtype != np.float32 or not np.array_equal(crops, np.floor(crops)):
        return crops
    return crops.astype(np.uint8)  # the server checked them: 0-255


def _direct(handle: Any) -> Any:
    """The handle with its calls sent straight to the replica over gRPC instead of through
    Ray's object store: ~2.5x less CPU per call measured here (0.9 + 0.6 ms against
    2.2 + 1.4 ms on the caller and the replica). An option Ray marks private
    (`_by_reference`): where a Ray version lacks it, the default transport."""
    try:
        return handle.options(_by_reference=False)
    except TypeError:
        return handle


def _scaling(replicas: Replicas, most: int, target: float) -> dict[str, Any]:
    if not replicas.auto:
        return {"num_replicas": replicas.min}
    return {
        "autoscaling_config": {
            "min_replicas": replicas.min,
            "max_replicas": max(replicas.min, most),
            "target_ongoing_requests": target,
            # Replicas start in seconds here: react within seconds, shrink after a minute.
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 60.0,
        }
    }


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class _Remote:
    """PoseService's engine and detector calls, through the deployments' handles; images go
    to the detectors several per call under load (fsanet.deploy.cluster.gather)."""

    def __init__(self, pose: Any, detect: Any | None, timeout_s: float, slots: int) -> None:
        self.pose, self._detect, self.timeout_s = pose, detect, timeout_s
        self._images = Gather(self._detect_many, concurrency=slots)

    async def infer(self, crops: np.ndarray) -> np.ndarray:
        return await _call(self.pose, compact(crops), self.timeout_s, "pose")

    async def detect(self, data: bytes) -> Detected:
        answer = await self._images.submit(data)
        if isinstance(answer, Refusal):
            raise HttpError(answer.status, answer.message, answer.headers)
        if isinstance(answer, Exception):  # the replica's bug: the same 500 as in one process
            raise answer
        return answer

    async def _detect_many(self, images: list[bytes]) -> list[Any]:
        return await _call(self._detect, images, self.timeout_s, "detection")


async def _call(handle: Any, arg: object, timeout_s: float, what: str) -> Any:
    """One handle call, bounded in time; what goes wrong on Ray's side becomes a 503."""
    response = handle.remote(arg)
    try:
        return await asyncio.wait_for(response, timeout_s)
    except TimeoutError:
        response.cancel()
        raise HttpError(
            503, f"no result within {timeout_s:g} s (server overloaded)", RETRY
        ) from None
    except ray.exceptions.RayTaskError as e:  # the replica's own code failed: a bug, a 500
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, Exception) else e) from None
    except (ray.exceptions.RayError, serve.exceptions.RayServeException, AioRpcError) as e:
        raise HttpError(
            503,
            f"a {what} replica was lost while serving this request ({type(e).__name__})",
            RETRY,
        ) from None

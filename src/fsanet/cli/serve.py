"""`fsanet serve`: the HTTP service (dynamic batching, limits, TLS, auth), in this process or
as Ray Serve replicas. Every limit's default and maximum come from `ServeConfig`/`Limits`."""

from __future__ import annotations

import argparse
from typing import Any

from fsanet.cli import groups, types
from fsanet.cli.limits import Limit, add_limit, limit_values, plain_defaults
from fsanet.core.errors import FsanetError

# Limits' fields (per request), then ServeConfig's (the server's).
REQUEST_LIMITS = (
    Limit("--max-body-mb", "max_body_bytes", float, 0, "request body limit", 1 << 20, True),
    Limit("--max-pixels", "max_pixels", int, 1, "image size limit"),
    Limit("--max-crops", "max_crops", int, 1, "crops per request"),
    Limit("--max-queue", "max_queue", int, 1, "crops waiting before 503"),
    Limit("--timeout", "request_timeout_s", float, 0, "seconds per request", above=True),
    Limit("--body-timeout", "body_timeout_s", float, 0, "seconds to send a body", above=True),
)
SERVER_LIMITS = (
    Limit("--max-batch", "max_batch", int, 1, "crops per engine call"),
    Limit(
        "--max-wait-ms", "max_wait_ms", float, 0,
        "how long the first request of a batch waits for others",
    ),
    Limit(
        "--max-inflight-mb", "max_inflight_mb", float, 0,
        "memory for requests in flight; past it they wait or get 503 (default: the machine's "
        "memory / 24, at most 1024)", above=True,
    ),
    Limit("--max-waiting", "max_waiting", int, 1, "requests waiting for memory"),
    Limit(
        "--max-connections", "max_connections", int, 1,
        "open connections; past it the oldest idle one is closed (default: the open-file "
        "limit - 64, at most 1024)",
    ),
    Limit("--header-timeout", "header_timeout_s", float, 0, "seconds to send headers", above=True),
    Limit("--keep-alive", "keep_alive_s", float, 0, "idle keep-alive seconds", above=True),
    Limit("--max-header-kb", "max_header_bytes", int, 1, "request header size limit", 1024),
    Limit(
        "--rate-limit", "rate_limit", float, 0,
        "requests per second per client address; past it 429 (default: no limit)",
        above=True, metavar="RPS",
    ),
    Limit(
        "--rate-burst", "rate_burst", int, 1,
        "requests a client may send at once under --rate-limit (default: one second's)",
        metavar="N",
    ),
    Limit(
        "--tls-handshake-timeout", "tls_handshake_timeout_s", float, 0,
        "seconds for a client to finish the TLS handshake; until then its socket counts "
        "against --max-connections and is the first closed when they run out", above=True,
    ),
    Limit(
        "--max-streams", "max_streams", int, 1,
        "WebSocket streams (WS /v1/stream) open at once; past it a new one is closed with 1013",
    ),
    Limit(
        "--stream-idle-timeout", "stream_idle_s", float, 0,
        "seconds a stream may send no frame before it is closed (4408)", above=True,
    ),
    Limit(
        "--stream-send-timeout", "stream_send_timeout_s", float, 0,
        "seconds a stream's client may leave an answer unread before the stream is dropped",
        above=True,
    ),
)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fsanet.assets.zoo import FUSION, VARIANTS
    from fsanet.deploy.serve.config import Limits, ServeConfig
    from fsanet.faces.options import SCORE_THRESHOLD

    server = plain_defaults(ServeConfig)
    groups.add_engine(p, f"{FUSION} (default), {', '.join(VARIANTS)}")
    groups.add_engine_dir(p, "serve")
    groups.add_threads(p)
    p.add_argument("--host", default=server["host"], help="address to listen on")
    p.add_argument(
        "--port", type=types.port, default=server["port"], help="port (0: any free port)"
    )
    for limit in REQUEST_LIMITS:
        add_limit(p, limit, plain_defaults(Limits))
    for limit in SERVER_LIMITS:
        add_limit(p, limit, server)
    p.add_argument(
        "--score-threshold",
        type=types.fraction,
        default=SCORE_THRESHOLD,
        help="face detector threshold",
    )
    p.add_argument("--no-faces", action="store_true", help="no face detector: crops only")
    groups.add_video(p)  # how streams run unless they ask otherwise
    p.add_argument(
        "--allowed-origins",
        type=types.library(_origins),
        default=(),
        metavar="ORIGIN[,ORIGIN...]",
        help="pages besides this server's own that may open streams (https://host[:port], or "
        "*; default: none)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require this bearer token (401 otherwise; default: $FSANET_API_KEY if set)",
    )
    p.add_argument("--docs", action="store_true", help="serve /docs and /redoc (Swagger UI)")
    p.add_argument("--no-ui", action="store_true", help="no live page at / (photos, the camera)")
    p.add_argument("--ssl-certfile", metavar="FILE", help="serve HTTPS: the PEM certificate chain")
    p.add_argument(
        "--ssl-keyfile", metavar="FILE", help="its private key (if not in the certificate file)"
    )
    p.add_argument(
        "--forwarded-allow-ips",
        type=types.csv,
        default=(),
        metavar="ADDR[,ADDR...]",
        help="proxies whose X-Forwarded-For is believed (addresses, networks or *; default: "
        "none, so the rate limit keys on the connection's address)",
    )
    groups.add_ray(
        p,
        "run the engine and the face detector as Ray Serve replicas (docs/SCALING.md; "
        "pip install 'fsanet[cluster]'); --threads is then per replica (default 1)",
        "--ray: an existing cluster's address (default: start a local one on 127.0.0.1)",
    )
    p.add_argument(
        "--replicas",
        type=types.library(_replicas),
        metavar="N|MIN-MAX|auto",
        help="--ray: replicas of the pose and of the detection deployment each (1); MIN-MAX "
        "or auto (1 to the cluster's CPUs): autoscaling on requests in flight",
    )


def _origins(text: str) -> tuple[str, ...]:
    from fsanet.deploy.serve.config import origin

    try:
        return tuple(origin(part) for part in types.csv(text))
    except ValueError as e:
        raise FsanetError(str(e)) from None


def _replicas(text: str) -> Any:
    from fsanet.deploy.cluster.config import Replicas  # no Ray import

    return Replicas.parse(text)


def run(args: argparse.Namespace) -> None:
    from fsanet.api import serve_model
    from fsanet.deploy.serve.auth import read_api_key
    from fsanet.deploy.serve.config import Limits, ServeConfig

    config = ServeConfig(
        args.host,
        args.port,
        limits=Limits(**limit_values(args, REQUEST_LIMITS)),
        access_log=args.access_log,
        forwarded_allow_ips=tuple(args.forwarded_allow_ips),
        api_key=read_api_key(args.api_key_file),
        docs=args.docs,
        ui=not args.no_ui,
        allowed_origins=args.allowed_origins,
        video=groups.video_options(args),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        **limit_values(args, SERVER_LIMITS),
    )
    if not args.ray and (args.address or args.replicas):
        raise FsanetError("--address and --replicas go with --ray")
    ray = None
    if args.ray:
        from fsanet.deploy.cluster import RayOptions, Replicas

        ray = RayOptions(
            args.address, args.replicas or Replicas(), replica_cpus=float(args.threads or 1)
        )
    serve_model(
        config,
        groups.one_model(args, "serve"),
        faces=not args.no_faces,
        score_threshold=args.score_threshold,
        threads=args.threads,
        mirror=args.mirror,
        ray=ray,
        **groups.engine_options(args),
    )

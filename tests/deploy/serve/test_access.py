"""Access options of `fsanet serve`: HTTPS with uvicorn's certificate options, and the
per-client request-rate limit (token buckets, 429 with Retry-After, counted in /metrics)."""

from __future__ import annotations

import ssl
import time

import httpx
import numpy as np
import pytest

from fsanet.core.errors import FsanetError
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.ratelimit import TokenBuckets
from fsanet.deploy.serve.server import check_tls

NPY = {"content-type": "application/x-npy"}
GOOD = np.full((1, 64, 64, 3), 100, np.uint8)
LIMITED = 'fsanet_rejected_total{reason="rate_limited"}'


def test_https_and_the_rate_limit_from_the_command_line(make_server, certificate):
    cert, key = certificate
    srv = make_server(
        "--no-faces", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
        "--rate-limit", "1", "--rate-burst", "3",
        verify=ssl.create_default_context(cafile=str(cert)),
    )  # fmt: skip
    assert srv.url.startswith("https://")
    with srv.client() as client:
        statuses = [
            client.post("/v1/pose/crops", content=srv.npy(GOOD), headers=NPY).status_code
            for _ in range(5)
        ]
        refused = client.post("/v1/pose/crops", content=srv.npy(GOOD), headers=NPY)
        probes = {client.get("/healthz").status_code for _ in range(5)}  # never limited
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
        assert refused.json() == {"error": "too many requests from this client", "status": 429}
        assert refused.headers["retry-after"] == "1" and probes == {200}
        time.sleep(1.1)  # /metrics is behind the limit too: wait for a token
        metrics = client.get("/metrics").text.splitlines()
    assert f"{LIMITED} 3" in metrics
    assert 'fsanet_requests_total{endpoint="/v1/pose/crops",status="429"} 3' in metrics
    # Only HTTPS is spoken, and a client that does not trust the certificate is refused.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{srv.url}/healthz", timeout=5)
    code, log = srv.stop()
    assert code == 0
    assert "TLS on" in log and "<= 1 requests/s per address (bursts of 3)" in log


def test_the_rate_limit_refills_and_is_per_address(config_server):
    srv = config_server(rate_limit=5.0)  # bursts of 5 by default
    rate = 5.0

    def until_refused(client: httpx.Client) -> tuple[list[int], float]:
        """GET /metrics until a 429 (at most 50): the statuses, and when the 429 was sent."""
        statuses: list[int] = []
        while not statuses or (statuses[-1] != 429 and len(statuses) < 50):
            sent = time.monotonic()
            statuses.append(client.get("/metrics").status_code)
        return statuses, sent

    # No assumption on how fast requests go: tokens refilled while they ran (rate x the time
    # measured) are allowed for, so a loaded machine cannot fail this.
    with srv.client() as client:
        start = time.monotonic()
        first, refused = until_refused(client)
        first_took = time.monotonic() - start
        time.sleep(0.45)  # at least 2.25 tokens back at 5/s
        later, _ = until_refused(client)
        since_refused = time.monotonic() - refused
    assert set(first[:-1]) == {200} and first[-1] == 429
    assert 5 <= first.count(200) <= 5 + first_took * rate, (first, first_took)  # the burst
    # After the 429 the bucket held under one token; then 0.45 s of refill, plus what came
    # back while `later` ran.
    assert set(later[:-1]) == {200} and later[-1] == 429
    assert 2 <= later.count(200) < 1 + since_refused * rate, (later, since_refused)
    # Another address has its own bucket (127.0.0.2 is loopback too, on Linux).
    with httpx.Client(base_url=srv.url, timeout=10, transport=_from("127.0.0.2")) as other:
        assert other.get("/metrics").status_code == 200


def _from(address: str) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(local_address=address)


def test_token_buckets_burst_refill_and_stay_bounded():
    now = [0.0]
    buckets = TokenBuckets(2.0, 3, max_clients=100, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert buckets.take("b") == 0.0  # per client
    now[0] = 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    now[0] = 100.0
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, no more
    for i in range(1000):  # a flood of addresses: the table stays bounded
        now[0] += 0.001
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) <= 100


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": float("nan")}, "rate limit"),
        ({"rate_limit": 0.0}, "rate limit"),
        ({"rate_burst": 4}, "needs a rate limit"),
        ({"rate_limit": 1.0, "rate_burst": 0}, "rate burst"),
        ({"ssl_keyfile": "key.pem"}, "needs a certificate"),
        ({"forwarded_allow_ips": ("10.0.0.0/8", "proxy.local")}, "'proxy.local' is not an IP"),
        ({"tls_handshake_timeout_s": 0.0}, "TLS handshake timeout must be positive"),
        # Past a sane maximum a value is a typo that switches the limit off.
        ({"max_inflight_mb": 1e12}, "max_inflight_mb must be at most"),
        ({"max_header_bytes": 2**30}, "max_header_bytes must be at most 1048576"),
        ({"tls_handshake_timeout_s": 600.0}, "tls_handshake_timeout_s must be at most 60"),
        ({"max_connections": 10**6}, "max_connections must be at most 65536"),
        ({"rate_limit": 1e9}, "rate_limit must be at most 1000000, got 1000000000"),
    ],
)
def test_access_options_are_checked(options, message):
    with pytest.raises(FsanetError, match=message):
        ServeConfig(**options)


def test_bad_certificates_are_one_line_errors(certificate, tmp_path, run_cli, fusion_artifact):
    cert, key = certificate
    check_tls(ServeConfig(ssl_certfile=str(cert), ssl_keyfile=str(key)))  # a good pair
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(FsanetError, match="does not exist"):
        check_tls(ServeConfig(ssl_certfile=str(tmp_path / "missing.pem")))
    with pytest.raises(FsanetError, match="cannot use the certificate"):
        check_tls(ServeConfig(ssl_certfile=str(cert)))  # no key in the certificate file
    result = run_cli(
        "serve", "--engine", str(fusion_artifact.path), "--port", "0",
        "--ssl-certfile", str(garbage), "--ssl-keyfile", str(key), timeout=60,
    )  # fmt: skip
    lines = [x for x in result.stderr.splitlines() if not x.startswith("IMPORTED=")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "TLS: cannot use the certificate and key" in lines[0] and str(garbage) in lines[0]


def test_forwarded_headers_are_believed_only_from_the_allowed_proxies(config_server):
    def statuses(srv, transport=None) -> list[int]:
        with httpx.Client(base_url=srv.url, timeout=10, transport=transport) as client:
            return [
                client.get("/metrics", headers={"x-forwarded-for": f"10.1.2.{i}"}).status_code
                for i in range(4)
            ]

    # By default nobody's: a new X-Forwarded-For on each request does not escape the limit.
    plain = config_server(rate_limit=1.0, rate_burst=2)
    assert statuses(plain) == [200, 200, 429, 429]
    # Believed from 127.0.0.1 only: each forwarded address has its own bucket...
    proxied = config_server(rate_limit=1.0, rate_burst=2, forwarded_allow_ips=["127.0.0.1"])
    assert statuses(proxied) == [200] * 4
    # ... and from another address the header is ignored.
    assert statuses(proxied, _from("127.0.0.2")) == [200, 200, 429, 429]
    _, log = proxied.stop()
    assert "proxy headers believed from 127.0.0.1" in log


def test_empty_api_keys_and_limits_past_their_maximum_are_one_line_errors(
    cli_command, tmp_path, monkeypatch
):
    import os
    import subprocess

    from fsanet.deploy.serve.auth import read_api_key

    monkeypatch.setenv("FSANET_API_KEY", " ")
    with pytest.raises(FsanetError, match="FSANET_API_KEY is set but empty"):
        read_api_key()
    monkeypatch.delenv("FSANET_API_KEY")
    assert read_api_key() is None  # not set: no auth, as documented
    empty = tmp_path / "key"
    empty.write_text("\n")
    with pytest.raises(FsanetError, match="is empty"):
        read_api_key(empty)

    def serve(*options: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
        result = subprocess.run(
            [*cli_command, "serve", "--port", "0", *options],
            capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
        )  # fmt: skip
        return result.returncode, [
            x for x in result.stderr.splitlines() if not x.startswith("IMPORTED=")
        ]

    code, lines = serve(env={"FSANET_API_KEY": ""})
    assert code == 1 and lines == [
        "fsanet: error: $FSANET_API_KEY is set but empty (unset it to serve without a key)"
    ]
    for option, value, most in [
        ("--max-inflight-mb", "1e12", None),
        ("--max-header-kb", "1000000", "1024"),
        ("--max-crops", "1000000000", "4096"),
        ("--max-body-mb", "1e6", "1024"),
        ("--max-pixels", "10000000000", "1e+09"),
        ("--tls-handshake-timeout", "3600", "60"),
        ("--rate-limit", "1e9", "1e+06"),
    ]:
        code, lines = serve(option, value)
        assert code == 2 and len(lines) == 1, lines
        assert f"argument {option}: must be at most {most or ''}" in lines[0]

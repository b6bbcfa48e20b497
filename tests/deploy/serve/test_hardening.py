"""Hostile clients against a real server: connection limits, big JSON, budget, logs, auth."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from fsanet.deploy.serve.app import create_app
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.server import startup_lines

NPY = {"content-type": "application/x-npy"}

CROPS = "/v1/pose/crops"
GOOD = np.full((1, 64, 64, 3), 100, np.uint8)


def recv_all(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything until the server closes (or `timeout`), and when the close came."""
    sock.settimeout(timeout)
    start, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - start


@pytest.fixture
def limited(config_server):
    return config_server(
        header_timeout_s=1.0,
        keep_alive_s=1.0,
        max_header_bytes=8192,
        max_connections=20,
        access_log=True,
    )


def test_idle_partial_and_oversized_headers_are_closed(limited):
    rejected = 'fsanet_rejected_total{reason="%s"}'
    with socket.create_connection(("127.0.0.1", limited.port)) as idle:
        data, took = recv_all(idle, 5)
    assert data == b"" and took < 3  # closed after the 1 s header timeout
    with socket.create_connection(("127.0.0.1", limited.port)) as partial:
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        data, took = recv_all(partial, 5)
    assert data.startswith(b"HTTP/1.1 408") and took < 3
    with socket.create_connection(("127.0.0.1", limited.port)) as big:
        big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        data, _ = recv_all(big, 5)
    assert data.startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", limited.port)) as endless:
        endless.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000)  # no line end
        data, _ = recv_all(endless, 5)
    assert data.startswith(b"HTTP/1.1 431")
    # Keep-alive: an idle connection after a request is closed after keep_alive_s.
    with socket.create_connection(("127.0.0.1", limited.port)) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data, took = recv_all(kept, 5)
    assert data.startswith(b"HTTP/1.1 200") and took < 3
    assert limited.metric(rejected % "idle_timeout") >= 1
    assert limited.metric(rejected % "header_timeout") == 1
    assert limited.metric(rejected % "header_too_large") == 2


def test_idle_sockets_beyond_the_cap_do_not_lock_good_clients_out(limited):
    idle = [socket.create_connection(("127.0.0.1", limited.port)) for _ in range(40)]
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=limited.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
        assert limited.metric('fsanet_rejected_total{reason="evicted"}') >= 20
    finally:
        for sock in idle:
            sock.close()


def test_parser_errors_are_counted_and_a_bad_chunk_is_a_400(limited):
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        data, _ = recv_all(sock, 5)
    assert data.startswith(b"HTTP/1.1 400")
    assert limited.metric('fsanet_rejected_total{reason="bad_request"}') == 1
    head = (
        f"POST {CROPS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        "Transfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\nzz\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(head)
        data, _ = recv_all(sock, 5)
    assert data.startswith(b"HTTP/1.1 400")
    sample = 'fsanet_requests_total{endpoint="/v1/pose/crops",status="%s"}'
    deadline = time.monotonic() + 5
    while limited.metric(sample % "400") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limited.metric(sample % "400") == 1 and limited.metric(sample % "499") == 0


def test_access_log_has_one_line_per_request(limited):
    with httpx.Client(base_url=limited.url, timeout=5) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        response = client.post(CROPS, content=limited.npy(GOOD), headers={"content-type": "x/y"})
    assert response.status_code == 415 and response.headers["x-request-id"]
    limited.stop()
    log = limited.stdout.read_text()
    assert log.count('"GET /healthz HTTP/1.1" 200') == 3
    assert log.count(f'"POST {CROPS} HTTP/1.1" 415') == 1


def _healthz_under_flood(
    url: str, path: str, body: bytes, headers: dict[str, str], seconds: float = 6.0
) -> tuple[list[int], float, float]:
    """4 clients post `body` for `seconds` while /healthz is timed.

    (statuses, /healthz p99 s, the flood's median request s): the check is held relative to
    the flood's own requests, measured alongside, not to a wall-clock limit.
    """
    stop = time.monotonic() + seconds
    statuses: list[int] = []
    durations: list[float] = []

    def flood() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                start = time.perf_counter()
                statuses.append(client.post(path, content=body, headers=headers).status_code)
                durations.append(time.perf_counter() - start)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        time.sleep(0.5)
        while time.monotonic() < stop - 0.5:
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
    for t in threads:
        t.join(30)
    p99, flood_median = float(np.percentile(latencies, 99)), float(np.median(durations))
    print(
        f"healthz under a 4-client flood of {path}: n={len(latencies)} "
        f"p50={np.median(latencies) * 1000:.1f} ms p99={p99 * 1000:.1f} ms, "
        f"{len(statuses)} floods answered, median {flood_median * 1000:.0f} ms each"
    )
    return statuses, p99, flood_median


def test_healthz_stays_fast_while_big_json_bodies_are_refused(config_server):
    srv = config_server()  # default limits: 16 MiB bodies, 256 crops
    crop = json.dumps(np.full((64, 64, 3), 25).tolist(), separators=(",", ":"))
    body = ('{"crops": [' + ", ".join([crop] * 350) + "]}").encode()  # ~ 15 MiB, 350 crops
    assert 14 * 2**20 < len(body) < 16 * 2**20
    statuses, p99, flood = _healthz_under_flood(
        srv.url, CROPS, body, {"content-type": "application/json"}
    )
    assert statuses and set(statuses) == {413}
    # Not stalled behind the flood: nearly every /healthz is answered in well under the time
    # one flood request takes on this machine now (a loop blocked by the scans would make
    # /healthz wait as long as they do). 100 ms is the target on an idle machine (SERVING.md).
    assert p99 < 0.5 * flood, (p99, flood)


def test_healthz_stays_fast_while_big_multipart_bodies_are_parsed(config_server):
    """15 MiB multipart bodies (each ~50 ms of parsing, now off the event loop)."""
    srv = config_server(faces=True)
    boundary = "fsanet-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + b"\x00" * (15 * 2**20)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    kind = {"content-type": f"multipart/form-data; boundary={boundary}"}
    statuses, p99, flood = _healthz_under_flood(srv.url, "/v1/pose", body, kind)
    assert statuses and all(400 <= s < 500 for s in statuses), set(statuses)  # not an image
    assert p99 < 0.5 * flood, (p99, flood)


def test_memory_budget_refuses_what_can_never_fit(config_server):
    srv = config_server(max_inflight_mb=1)
    small = srv.post_crops(GOOD)
    assert small.status_code == 200
    big = srv.post_crops(np.repeat(GOOD, 64, 0))  # 64 float32 crops: 3 MB > 1 MB
    assert big.status_code == 413 and "budget" in big.json()["error"]
    assert "fsanet_memory_in_flight_bytes 0" in httpx.get(f"{srv.url}/metrics").text


def test_api_key_is_required_and_never_shown(config_server, tmp_path):
    key = "s3cret-" + "k" * 24
    srv = config_server(env={"FSANET_API_KEY": "ignored"}, api_key=key, access_log=True)
    body = srv.npy(GOOD)
    headers = {"content-type": "application/x-npy"}
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        assert client.post(CROPS, content=body, headers=headers).status_code == 401
        wrong = {**headers, "authorization": "Bearer nope"}
        assert client.post(CROPS, content=body, headers=wrong).status_code == 401
        good = {**headers, "authorization": f"Bearer {key}"}
        assert client.post(CROPS, content=body, headers=good).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open
        assert client.get("/metrics").status_code == 401
        metrics = client.get("/metrics", headers={"authorization": f"Bearer {key}"}).text
    assert 'status="401"' in metrics and key not in metrics
    _, err = srv.stop()
    assert "auth on" in err
    assert key not in err and key not in srv.stdout.read_text()


def test_startup_lines_show_the_limits_and_warn_on_open_hosts():
    config = ServeConfig(max_inflight_mb=512, max_connections=100, header_timeout_s=7)
    text = "\n".join(startup_lines("fusion", config, faces=False, host="127.0.0.1"))
    for part in ("512 MB", "<= 100 connections", "headers 7 s", "auth off", "docs off"):
        assert part in text
    assert "TLS off; proxy headers believed from nobody" in text
    tls = ServeConfig(
        ssl_certfile="c.pem", tls_handshake_timeout_s=3, forwarded_allow_ips=("10.0.0.0/8",)
    )
    text = "\n".join(startup_lines("fusion", tls, faces=False, host="127.0.0.1"))
    assert "TLS on (handshake 3 s); proxy headers believed from 10.0.0.0/8" in text
    assert "warning" not in text
    assert "warning" in startup_lines("fusion", config, faces=False, host="0.0.0.0")[-1]
    keyed = ServeConfig(api_key="k" * 20)
    assert not any("warning" in x for x in startup_lines("f", keyed, faces=False, host="::"))
    assert "k" * 20 not in repr(keyed)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_wait_ms": float("nan")}, "max wait"),
        ({"max_inflight_mb": float("nan")}, "in-flight memory"),
        ({"header_timeout_s": float("inf")}, "header timeout"),
        ({"keep_alive_s": 0}, "keep-alive"),
        ({"max_connections": 0}, "max connections"),
    ],
)
def test_serve_config_refuses_nan_and_non_positive(options, message):
    from fsanet.core.errors import FsanetError

    with pytest.raises(FsanetError, match=message):
        ServeConfig(**options)


class _NanEngine:
    name, variants = "nan", ["capsule", "noS", "var"]

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return np.full((len(crops), 3), np.nan)


def test_non_finite_model_output_is_a_500_with_the_request_id(caplog):
    app = create_app(_NanEngine(), ServeConfig(max_wait_ms=0))  # type: ignore[arg-type]

    async def main() -> httpx.Response:
        service = app.state.service
        await service.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                buffer = __import__("io").BytesIO()
                np.save(buffer, GOOD)
                return await client.post(
                    CROPS, content=buffer.getvalue(), headers={"content-type": "application/x-npy"}
                )
        finally:
            await service.stop()

    with caplog.at_level("ERROR", logger="uvicorn.error"):
        response = asyncio.run(main())
    rid = response.headers["x-request-id"]
    assert response.status_code == 500 and rid in response.json()["error"]
    assert any(rid in r.getMessage() and "non-finite" in r.getMessage() for r in caplog.records)


def test_the_command_line_sets_the_key_and_connection_limits(make_server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-token\n")
    srv = make_server(
        "--no-faces", "--api-key-file", str(key_file), "--max-connections", "8",
        "--header-timeout", "2", "--keep-alive", "1", "--max-header-kb", "8",
    )  # fmt: skip
    crops = np.full((1, 64, 64, 3), 128, np.uint8)
    with srv.client() as client:
        body = srv.npy(crops)
        assert client.post("/v1/pose/crops", content=body, headers=NPY).status_code == 401
        auth = {**NPY, "authorization": "Bearer s3cret-token"}
        assert client.post("/v1/pose/crops", content=body, headers=auth).status_code == 200
        big = {**auth, "x-padding": "a" * 10_000}
        assert client.post("/v1/pose/crops", content=body, headers=big).status_code == 431
    code, log = srv.stop()
    assert code == 0 and "s3cret-token" not in log

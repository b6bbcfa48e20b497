"""WS /v1/stream against a real `fsanet serve` (real engine and face detector) with a real
websockets client: the records equal the library's video path, the newest frame is answered,
and every limit of the HTTP routes holds per stream (key, origin, places, sizes, idle clients,
clients that stop reading, the memory budget, the rate limit, TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fsanet.deploy.serve.config import ServeConfig, origin
from fsanet.deploy.serve.stream.access import (
    Refused,
    StreamOptions,
    origin_allowed,
    subprotocol_key,
)
from fsanet.engine.pose import PoseEngine
from fsanet.faces.estimator import HeadPoseEstimator
from fsanet.faces.options import OneEuro, VideoOptions
from fsanet.faces.predict import face_record
from fsanet.faces.video import FaceStages, SceneCuts, VideoFrame, video_frames

from .conftest import Server, start_server

KEY = "s3cret-Key_0"
BOUND_S = 120.0  # no loop here runs longer (a guard against hangs, not a speed check)


# --- helpers ---------------------------------------------------------------------------------


def clip(shared: Path, name: str, count: int, start: int = 0) -> list[bytes]:
    """`count` frames of a clip from `start`, each as the JPEG a camera page would send."""
    capture = cv2.VideoCapture(str(shared / "videos" / name))
    frames = []
    try:
        for i in range(start + count):
            ok, image = capture.read()
            assert ok, f"{name} has fewer than {start + count} frames"
            if i >= start:
                frames.append(cv2.imencode(".jpg", image)[1].tobytes())
    finally:
        capture.release()
    return frames


def ws_url(server: Server, query: str = "") -> str:
    scheme = "wss" if server.url.startswith("https") else "ws"
    return f"{scheme}://127.0.0.1:{server.port}/v1/stream" + (f"?{query}" if query else "")


def opened(server: Server, query: str = "", **options: Any) -> Any:
    """A client connection (no keepalive pings: the tests read when they choose)."""
    ssl_context = server.verify if isinstance(server.verify, ssl.SSLContext) else None
    return connect(
        ws_url(server, query),
        open_timeout=30,
        ping_interval=None,
        max_size=None,
        ssl=ssl_context,
        **options,
    )


async def answer(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 60))


async def one_by_one(ws: ClientConnection, frames: list[bytes]) -> list[dict[str, Any]]:
    """Each frame sent once the previous one is answered (no skips)."""
    answers = []
    for data in frames:
        await ws.send(data)
        answers.append(await answer(ws))
    return answers


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes: its close code and reason."""
    deadline = time.monotonic() + BOUND_S
    try:
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), BOUND_S)
    except ConnectionClosed as e:
        return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, None)
    pytest.fail("the stream was never closed")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def wait_for_metric(server: Server, sample: str, value: float) -> float:
    """Poll /metrics until `sample` equals `value` (bounded); the last value read."""
    deadline = time.monotonic() + 30
    seen = server.metric(sample)
    while seen != value and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = server.metric(sample)
    return seen


# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streams(cli_command, fusion_artifact, tmp_path_factory) -> Iterator[Server]:
    """Small limits: frames up to 2 MiB and 4 Mpixels."""
    srv = start_server(
        cli_command,
        fusion_artifact,
        tmp_path_factory.mktemp("stream") / "server.log",
        "--max-body-mb", "2",
        "--max-pixels", "4000000",
    )  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def guarded(cli_command, fusion_artifact, tmp_path_factory) -> Iterator[Server]:
    """An API key, two allowed foreign pages, two places, short idle and key timeouts."""
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "key").write_text(KEY)
    srv = start_server(
        cli_command,
        fusion_artifact,
        folder / "server.log",
        "--api-key-file", str(folder / "key"),
        "--allowed-origins", "https://App.Example:443,http://localhost:9999",
        "--max-streams", "2",
        "--stream-idle-timeout", "3",
        "--header-timeout", "3",
    )  # fmt: skip
    yield srv
    srv.stop()


# --- the records -----------------------------------------------------------------------------


def library_records(
    engine: PoseEngine,
    frames: list[bytes],
    times: list[float],
    *,
    detect_every: int,
    smooth: bool,
    rotation: bool,
) -> list[list[dict[str, Any]]]:
    """The same JPEGs through `fsanet predict`'s video path, at the times the server used."""
    estimator = HeadPoseEstimator(engine)
    options = VideoOptions(pipelined=False, detect_every=detect_every)
    stages = FaceStages(estimator, options, OneEuro() if smooth else None)
    cuts = SceneCuts()
    decoded = []
    for i, (data, at) in enumerate(zip(frames, times, strict=True)):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        decoded.append(VideoFrame(i, image, at, time.perf_counter(), cut=cuts.is_cut(image)))
    source = type("S", (), {"location": "stream"})()
    return [
        [face_record(source, f.index, k, face, f.time, rotation) for k, face in enumerate(f.faces)]
        for f in video_frames(iter(decoded), stages)
    ]


def assert_same_records(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        assert a["track"] == b["track"] and a["box"] == b["box"] and a["frame"] == b["frame"]
        assert a["score"] == b["score"] and a["landmarks"] == b["landmarks"]
        for axis in ("yaw", "pitch", "roll"):  # rounded to 0.01 on both sides
            assert abs(a[axis] - b[axis]) <= 0.0100001, (axis, a, b)
        if "raw" in b:
            assert all(abs(a["raw"][k] - v) <= 0.0100001 for k, v in b["raw"].items())
        if "rotation" in b:
            np.testing.assert_allclose(a["rotation"], b["rotation"], atol=3e-4)


@pytest.mark.parametrize(
    ("query", "detect_every", "smooth", "rotation"),
    [("rotation=1", 1, True, True), ("detect_every=3&smooth=0", 3, False, False)],
)
def test_records_equal_the_video_path(
    streams, shared, fusion_engine, query, detect_every, smooth, rotation
):
    frames = clip(shared, "talking-head.mp4", 45)

    async def session() -> list[dict[str, Any]]:
        async with opened(streams, query) as ws:
            return await one_by_one(ws, frames)

    answers = run(session())
    assert [a["type"] for a in answers] == ["frame"] * len(frames)
    assert [a["frame"] for a in answers] == list(range(len(frames)))
    assert {a["skipped"] for a in answers} == {0}
    assert {(a["width"], a["height"]) for a in answers} == {(512, 512)}
    times = [a["time"] for a in answers]
    assert times == sorted(times) and all(a["server_ms"] > 0 for a in answers)
    expected = library_records(
        fusion_engine,
        frames,
        times,
        detect_every=detect_every,
        smooth=smooth,
        rotation=rotation,
    )
    for got, want in zip(answers, expected, strict=True):
        assert len(want) == 1  # one talking head, found in every frame
        assert_same_records(got["faces"], want)
    assert {f["track"] for a in answers for f in a["faces"]} == {1}
    assert all(f["source"] == "stream" for a in answers for f in a["faces"])


def test_classroom_faces_and_tracks_equal_the_video_path(streams, shared, fusion_engine):
    frames = clip(shared, "classroom.mp4", 12, start=100)

    async def session() -> list[dict[str, Any]]:
        async with opened(streams) as ws:
            return await one_by_one(ws, frames)

    answers = run(session())
    expected = library_records(
        fusion_engine,
        frames,
        [a["time"] for a in answers],
        detect_every=1,
        smooth=True,
        rotation=False,
    )
    assert sum(len(a["faces"]) for a in answers) >= 3 * len(frames)  # several faces a frame
    for got, want in zip(answers, expected, strict=True):
        assert_same_records(got["faces"], want)


def test_the_newest_frame_is_answered_and_skips_are_counted(streams, shared):
    frames = clip(shared, "talking-head.mp4", 40)
    before = streams.metric("fsanet_stream_frames_skipped_total")

    async def session() -> list[dict[str, Any]]:
        async with opened(streams) as ws:
            for data in frames:  # as fast as the socket takes them: faster than posing
                await ws.send(data)
            answers = [await answer(ws)]
            while answers[-1]["frame"] != len(frames) - 1:
                answers.append(await answer(ws))
            return answers

    answers = run(session())
    indices = [a["frame"] for a in answers]
    assert indices == sorted(set(indices)) and indices[-1] == len(frames) - 1
    skipped = sum(a["skipped"] for a in answers)
    assert skipped >= 1 and len(answers) + skipped == len(frames)
    # Each answer's count is exactly the frames between it and the answer before it.
    previous = -1
    for a in answers:
        assert a["skipped"] == a["frame"] - previous - 1
        previous = a["frame"]
    assert streams.metric("fsanet_stream_frames_skipped_total") - before == skipped


def test_bad_frames_get_an_error_and_the_stream_goes_on(streams, shared):
    good = clip(shared, "talking-head.mp4", 1)[0]
    too_big = good + bytes(2 * 1024 * 1024)  # over --max-body-mb 2, within the slack
    huge = cv2.imencode(".png", np.zeros((2001, 2001, 3), np.uint8))[1].tobytes()  # > 4 Mpx

    async def session() -> tuple[list[dict[str, Any]], tuple[int | None, str | None]]:
        async with opened(streams) as ws:
            got = []
            for data in (too_big, b"not an image", good[:200], huge, good):
                await ws.send(data)
                got.append(await answer(ws))
            # Past the slack: a protocol violation. The server may close (1009) from the
            # frame's header while the client is still sending its payload.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(bytes(4 * 1024 * 1024))
            return got, await closed(ws)

    got, (code, reason) = run(session())
    assert [(a["type"], a["frame"], a.get("status")) for a in got] == [
        ("error", 0, 413),
        ("error", 1, 415),
        ("error", 2, 400),
        ("error", 3, 413),
        ("frame", 4, None),
    ]
    assert "limit is 2097152" in got[0]["error"] and "4000000" in got[3]["error"]
    assert len(got[4]["faces"]) == 1 and got[4]["skipped"] == 0
    assert code == 1009 and reason
    assert wait_for_metric(streams, "fsanet_memory_in_flight_bytes", 0) == 0


def test_protocol_violations_close_with_a_reason(streams, shared):
    good = clip(shared, "talking-head.mp4", 1)[0]

    async def close_after(query: str, message: str | None) -> tuple[int | None, str | None]:
        async with opened(streams, query) as ws:
            if message is not None:
                await ws.send(message)
            return await closed(ws)

    assert run(close_after("detect_every=0", None)) == (
        1008,
        "detect_every must be an integer >= 1, got '0'",
    )
    assert run(close_after("key=abc", None))[0] == 1008  # never a key in the URL
    assert run(close_after("", "not json"))[0] == 1008
    code, reason = run(close_after("", json.dumps({"type": "hello"})))
    assert code == 1008 and "unknown message type" in (reason or "")
    code, reason = run(close_after("", json.dumps({"type": "options", "detect_every": "2"})))
    assert code == 1008 and "detect_every" in (reason or "")

    async def options_mid_stream() -> list[dict[str, Any]]:
        async with opened(streams, "smooth=0") as ws:
            first = await one_by_one(ws, [good])
            await ws.send(json.dumps({"type": "options", "smooth": True, "detect_every": 2}))
            return first + await one_by_one(ws, [good, good])

    answers = run(options_mid_stream())
    assert "raw" not in answers[0]["faces"][0]  # smoothing off, then on
    assert all("raw" in a["faces"][0] for a in answers[1:])


def test_four_streams_at_once(streams, shared):
    frames = clip(shared, "talking-head.mp4", 18)

    async def one(offset: int) -> list[dict[str, Any]]:  # each from its own frame on
        async with opened(streams) as ws:
            return await one_by_one(ws, frames[offset : offset + 15])

    async def four() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(one(i) for i in range(4)))

    results = run(four())
    for answers in results:
        assert [a["type"] for a in answers] == ["frame"] * 15
        assert {f["track"] for a in answers for f in a["faces"]} == {1}  # tracks per stream
        assert all(len(a["faces"]) == 1 for a in answers)
    # The same frame gives the same face in every stream (streams do not mix).
    boxes = [[a["faces"][0]["box"] for a in answers] for answers in results]
    for offset in range(1, 4):
        assert boxes[offset][: 15 - offset] == boxes[0][offset:]
    assert wait_for_metric(streams, "fsanet_streams_open", 0) == 0
    assert wait_for_metric(streams, "fsanet_memory_in_flight_bytes", 0) == 0


def test_a_client_that_stops_reading_is_dropped(make_server, shared):
    """Answers pile up unread: the server's send times out, the stream is dropped, and the
    memory budget it held comes back."""
    srv = make_server("--stream-send-timeout", "1", "--max-inflight-mb", "64")
    frames = clip(shared, "talking-head.mp4", 8)

    async def stop_reading() -> tuple[int, float]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.connect(("127.0.0.1", srv.port))
        sent, start = 0, time.monotonic()
        # max_queue=1: the client library stops reading the socket after one answer.
        async with opened(srv, "rotation=1", sock=sock, max_queue=1) as ws:
            try:
                while time.monotonic() - start < BOUND_S:
                    await asyncio.wait_for(ws.send(frames[sent % len(frames)]), 30)
                    sent += 1
                    await asyncio.sleep(0.01)
            except ConnectionClosed:
                return sent, time.monotonic() - start
        pytest.fail("the server kept a stream whose client never read")

    sent, _ = run(stop_reading())
    assert sent > 0
    assert wait_for_metric(srv, 'fsanet_streams_closed_total{reason="send_timeout"}', 1) == 1
    assert wait_for_metric(srv, "fsanet_streams_open", 0) == 0
    assert wait_for_metric(srv, "fsanet_memory_in_flight_bytes", 0) == 0
    assert 0 < srv.metric("fsanet_memory_in_flight_peak_bytes") <= 64 * 1024 * 1024


DYING_CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    frame = open(sys.argv[2], "rb").read()
    async with connect(sys.argv[1], ping_interval=None) as ws:
        print("open", flush=True)
        while True:
            await ws.send(frame)
            await asyncio.sleep(0.005)
asyncio.run(main())
"""


def test_a_killed_client_frees_everything(streams, shared, tmp_path):
    frame = tmp_path / "frame.jpg"
    frame.write_bytes(clip(shared, "talking-head.mp4", 1)[0])
    before = streams.metric("fsanet_stream_frames_total")
    client = subprocess.Popen(
        [sys.executable, "-c", DYING_CLIENT, ws_url(streams), str(frame)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "open"
        deadline = time.monotonic() + BOUND_S
        while streams.metric("fsanet_stream_frames_total") < before + 3:  # in full flow
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        client.kill()  # SIGKILL: no close frame, the kernel just drops the socket
        client.wait()
    assert wait_for_metric(streams, "fsanet_streams_open", 0) == 0
    assert wait_for_metric(streams, "fsanet_memory_in_flight_bytes", 0) == 0


def test_shutdown_closes_open_streams_with_1012(make_server, shared):
    srv = make_server()
    good = clip(shared, "talking-head.mp4", 1)[0]

    async def session() -> tuple[int | None, str | None]:
        async with opened(srv) as ws:
            await one_by_one(ws, [good])
            srv.proc.send_signal(signal.SIGTERM)
            return await closed(ws)

    assert run(session())[0] == 1012  # "service restart": the client may come back
    assert srv.proc.wait(timeout=60) == 0


# --- access ----------------------------------------------------------------------------------


def test_api_key_by_subprotocol_or_first_message(guarded, shared):
    good = clip(shared, "talking-head.mp4", 1)[0]

    async def by_subprotocol(key: str) -> tuple[str | None, Any]:
        async with opened(guarded, subprotocols=["fsanet.v1", f"bearer.{key}"]) as ws:
            chosen = ws.subprotocol
            try:
                return chosen, await one_by_one(ws, [good])
            except ConnectionClosed as e:
                return chosen, (e.rcvd.code, e.rcvd.reason) if e.rcvd else None

    async def by_message(first: str | bytes) -> Any:
        async with opened(guarded) as ws:
            await ws.send(first)
            try:
                return await one_by_one(ws, [good])
            except ConnectionClosed as e:
                return (e.rcvd.code, e.rcvd.reason) if e.rcvd else None

    chosen, answers = run(by_subprotocol(KEY))
    assert chosen == "fsanet.v1" and answers[0]["type"] == "frame"
    assert run(by_message(json.dumps({"type": "auth", "key": KEY})))[0]["type"] == "frame"
    assert run(by_subprotocol("wrong"))[1] == (4401, "invalid API key")
    assert run(by_message(json.dumps({"type": "auth", "key": "wrong"}))) == (
        4401,
        "invalid API key",
    )
    assert run(by_message(good)) == (4401, "invalid API key")  # a frame before the key
    log = guarded.log.read_text()
    assert KEY not in log and "wrong" not in log


def test_origin_check(guarded, shared):
    good = clip(shared, "talking-head.mp4", 1)[0]
    auth = {"subprotocols": ["fsanet.v1", f"bearer.{KEY}"]}

    async def from_page(page: str | None) -> Any:
        try:
            async with opened(guarded, origin=page, **auth) as ws:
                return (await one_by_one(ws, [good]))[0]["type"]
        except InvalidStatus as e:
            return e.response.status_code, json.loads(e.response.body)

    status, body = run(from_page("https://evil.example"))
    assert status == 403 and body["status"] == 403 and "origin" in body["error"]
    assert run(from_page("http://localhost:9998"))[0] == 403  # another port
    assert run(from_page(f"https://127.0.0.1:{guarded.port}"))[0] == 403  # another scheme
    assert run(from_page(f"http://127.0.0.1:{guarded.port}")) == "frame"  # the server's own
    assert run(from_page("https://app.example")) == "frame"  # --allowed-origins
    assert run(from_page("http://localhost:9999")) == "frame"
    assert run(from_page(None)) == "frame"  # not a browser


def test_max_streams_and_idle_streams(guarded, shared):
    good = clip(shared, "talking-head.mp4", 1)[0]
    auth = {"subprotocols": ["fsanet.v1", f"bearer.{KEY}"]}

    async def full() -> tuple[Any, Any, list[dict[str, Any]]]:
        async with opened(guarded, **auth) as a, opened(guarded, **auth) as b:
            await one_by_one(a, [good])
            await one_by_one(b, [good])  # both admitted
            async with opened(guarded, **auth) as c:
                refused = await closed(c)
            await b.close()
            idle = await closed(a)  # a sends nothing more: closed after the idle timeout
        # a place is free again
        async with opened(guarded, **auth) as d:
            return refused, idle, await one_by_one(d, [good])

    refused, idle, answers = run(full())
    assert refused == (1013, "too many streams")
    assert idle == (4408, "idle stream: no frame for 3 s")
    assert answers[0]["type"] == "frame"

    async def silent() -> Any:  # connects, never sends a key: closed after the header timeout
        async with opened(guarded) as ws:
            return await closed(ws)

    assert run(silent()) == (4401, "invalid API key")


def test_rate_limit_per_frame_and_tls(make_server, certificate, shared):
    cert, key = certificate
    srv = make_server(
        "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
        "--rate-limit", "0.5", "--rate-burst", "2",
        verify=ssl.create_default_context(cafile=str(cert)),
    )  # fmt: skip
    good = clip(shared, "talking-head.mp4", 1)[0]

    async def session() -> list[dict[str, Any]]:
        async with opened(srv) as ws:
            return await one_by_one(ws, [good] * 4)

    answers = run(session())
    assert [a["type"] for a in answers[:2]] == ["frame", "frame"]
    assert [(a["type"], a["status"]) for a in answers[2:]] == [("error", 429)] * 2
    assert "rate limit" in answers[2]["error"]


# --- fsanet loadtest --stream ----------------------------------------------------------------


def test_loadtest_streams(streams, shared):
    result = subprocess.run(
        [
            sys.executable, "-m", "fsanet", "loadtest", streams.url, "--json",
            "--stream", "2", "--video", str(shared / "videos" / "talking-head.mp4"),
            "--fps", "10", "--duration", "2", "--size", "640x360",
            "--stream-query", "detect_every=2",
        ],
        capture_output=True,
        text=True,
        timeout=BOUND_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["streams"] == 2 and report["errors"] == 0 and report["failed_streams"] == 0
    assert report["frames_answered"] > 0 and report["faces_per_frame"] == pytest.approx(1.0)
    assert report["frames_answered"] + report["frames_skipped"] <= report["frames_sent"]
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["width"] == 640 and report["height"] == 360
    assert report["url"].endswith("/v1/stream?detect_every=2")
    text = subprocess.run(
        [
            sys.executable, "-m", "fsanet", "loadtest", streams.url, "--stream", "1",
            "--video", str(shared / "videos" / "talking-head.mp4"), "--duration", "1",
        ],
        capture_output=True,
        text=True,
        timeout=BOUND_S,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "1 streams" in text.stdout and "round trip ms" in text.stdout


# --- the rules, without a server -------------------------------------------------------------


def test_origins_and_options():
    assert origin("HTTPS://App.Example:443/") == "https://app.example"
    assert origin("http://[::1]:8000") == "http://[::1]:8000"
    for bad in ("ftp://x", "https://x/path", "x.example", "https://u@x"):
        with pytest.raises(ValueError):
            origin(bad)
    assert origin_allowed(None, "h:1", False, ())  # no Origin: not a browser
    assert origin_allowed("http://h:1", "h:1", False, ())
    assert origin_allowed("http://H:80", "h", False, ())
    assert not origin_allowed("http://h:1", "h:1", True, ())  # the page came over http
    assert not origin_allowed("null", "h:1", False, ())
    assert origin_allowed("https://a.b", "h:1", False, ("https://a.b",))
    assert origin_allowed("https://x.y", "h:1", False, ("*",))
    with pytest.raises(Exception, match="allowed_origins"):
        ServeConfig(allowed_origins=("https://A.b",))  # canonical forms only
    assert subprotocol_key(["fsanet.v1", "bearer.abc"]) == "abc"
    assert subprotocol_key(["fsanet.v1"]) is None
    with pytest.raises(Refused, match="token characters"):
        subprotocol_key(["bearer.a/b="])
    options = StreamOptions(2).from_query(b"smooth=0&rotation=true")
    assert options == StreamOptions(2, smooth=False, rotation=True)
    assert options.from_message({"type": "options", "detect_every": 5}).detect_every == 5
    for query in (b"detect_every=x", b"detect_every=-1", b"smooth=maybe", b"api_key=k", b"x=1"):
        with pytest.raises(Refused):
            StreamOptions().from_query(query)
    for message in ({"smooth": 1}, {"detect_every": True}, {"detect_every": 0}, {"zoom": 2}):
        with pytest.raises(Refused):
            StreamOptions().from_message(message)


def test_stream_settings_are_checked_and_shown():
    from fsanet.core.errors import FsanetError
    from fsanet.deploy.serve.server import startup_lines

    for bad in ({"max_streams": 0}, {"stream_idle_s": float("nan")}, {"max_streams": 10**6}):
        with pytest.raises(FsanetError, match="stream"):
            ServeConfig(**bad)
    config = ServeConfig(max_streams=3, allowed_origins=("https://a.example",))
    line = startup_lines("fusion", config, faces=True, host="127.0.0.1")[-1]
    assert line.startswith("  streams: <= 3 (each holds 17 MiB of the in-flight memory)")
    assert "pages from this server's, https://a.example" in line
    assert "streams: off" in startup_lines("fusion", config, faces=False, host="127.0.0.1")[-1]

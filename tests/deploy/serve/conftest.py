"""A real `fsanet serve` in a subprocess on a free loopback port, and helpers to talk to it."""

from __future__ import annotations

import io
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from fsanet.engine.artifact import Artifact

START_TIMEOUT_S = 60.0
NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def angles(response: httpx.Response) -> np.ndarray:
    """N x 3 [yaw, pitch, roll] from a /v1/pose/crops answer."""
    assert response.status_code == 200, response.text
    return np.array([[p["yaw"], p["pitch"], p["roll"]] for p in response.json()["poses"]])


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    port: int
    log: Path  # the server's stderr (a file: a pipe nobody reads could fill and block it)
    stdout: Path | None = None  # for servers whose stdout goes to a file
    verify: ssl.SSLContext | bool = True  # HTTPS: what httpx trusts

    angles = staticmethod(angles)
    npy = staticmethod(npy)

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, verify=self.verify)

    def post_crops(self, crops: np.ndarray, timeout: float = 30.0) -> httpx.Response:
        with self.client(timeout) as client:
            return client.post("/v1/pose/crops", content=npy(crops), headers=NPY)

    def metric(self, sample: str) -> float:
        """One sample of /metrics, e.g. 'fsanet_requests_total{endpoint="/healthz",status="200"}'
        (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10, verify=self.verify).text
        for line in text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == sample:
                return float(value)
        return 0.0

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        """SIGTERM, wait, and return (exit code, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode, self.log.read_text(errors="replace")


def start_server(
    cli: list[str],
    artifact: Artifact,
    log: Path,
    *options: str,
    verify: ssl.SSLContext | bool = True,
) -> Server:
    """`fsanet serve --port 0` on 127.0.0.1 (`cli`: the root conftest's `cli_command`);
    returns once /readyz answers 200 (over HTTPS, trusting `verify`, with --ssl-certfile)."""
    cmd = [*cli, "serve", "--engine", str(artifact.path), "--port", "0"]
    with log.open("w") as err:
        proc = subprocess.Popen([*cmd, *options], stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    line = proc.stdout.readline()  # "fsanet serve: listening on http://127.0.0.1:PORT"
    match = re.search(r"(https?)://127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        proc.wait()
        pytest.fail(f"the server did not start: {line!r} {log.read_text()}")
    scheme, port = match.group(1), int(match.group(2))
    server = Server(proc, f"{scheme}://127.0.0.1:{port}", port, log, verify=verify)
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2, verify=verify).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    code, err = server.stop()
    pytest.fail(f"the server never became ready (exit {code}): {err}")


@pytest.fixture(scope="session")
def server(
    cli_command: list[str], fusion_artifact: Artifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server for most tests: small limits so that the limit tests stay cheap."""
    srv = start_server(
        cli_command,
        fusion_artifact,
        tmp_path_factory.mktemp("serve") / "server.log",
        "--max-batch", "32",
        "--max-wait-ms", "20",
        "--max-body-mb", "2",
        "--max-crops", "64",
        "--max-pixels", "4000000",
        "--body-timeout", "1",
    )  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture
def make_server(
    cli_command: list[str], fusion_artifact: Artifact, tmp_path: Path
) -> Iterator[Callable[..., Server]]:
    """Start a server with its own options; stopped at the end of the test."""
    started: list[Server] = []

    def make(
        *options: str, verify: ssl.SSLContext | bool = True, artifact: Artifact | None = None
    ) -> Server:
        log = tmp_path / f"server{len(started)}.log"
        engine = artifact or fusion_artifact
        srv = start_server(cli_command, engine, log, *options, verify=verify)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


# A server from a `ServeConfig` (options the command line may not have): stdout and stderr
# both go to files, so a busy access log can never fill a pipe and block the server.
CONFIG_SERVER = """
import json, sys
from fsanet.api import load
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.server import serve
from fsanet.deploy.serve.config import Limits
path, options = sys.argv[1], json.loads(sys.argv[2])
limits = Limits(**options.pop("limits", {}))
faces = options.pop("faces", False)
engine = load(path)
estimator = None
if faces:
    from fsanet.faces.estimator import HeadPoseEstimator
    estimator = HeadPoseEstimator(engine)
serve(engine, ServeConfig(port=0, limits=limits, **options), estimator)
"""


def start_config_server(
    artifact: Artifact,
    folder: Path,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
    verify: ssl.SSLContext | bool = True,
    **options: object,
) -> Server:
    """`nofile`: the server's open-file limit (as `ulimit -n`); `verify`: what an HTTPS
    client trusts (with `ssl_certfile` in the options)."""
    import json
    import os
    import resource
    import sys

    def limit_files() -> None:  # runs in the child, before the server starts
        if nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    out, log = folder / "stdout.log", folder / "stderr.log"
    with out.open("w") as o, log.open("w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-c", CONFIG_SERVER, str(artifact.path), json.dumps(options)],
            stdout=o,
            stderr=e,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=limit_files if nofile is not None else None,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"(https?)://127\.0\.0\.1:(\d+)", out.read_text())
        if match:
            port = int(match.group(2))
            url = f"{match.group(1)}://127.0.0.1:{port}"
            server = Server(proc, url, port, log, out, verify=verify)
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    ready = httpx.get(f"{server.url}/readyz", timeout=2, verify=verify)
                    if ready.status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(f"the server did not start: {log.read_text()}")


@pytest.fixture
def config_server(fusion_artifact: Artifact, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers from `ServeConfig` keyword arguments; stopped at the end of the test."""
    started: list[Server] = []

    def make(
        env: dict[str, str] | None = None,
        nofile: int | None = None,
        verify: ssl.SSLContext | bool = True,
        **options: object,
    ) -> Server:
        folder = tmp_path / f"server{len(started)}"
        folder.mkdir()
        srv = start_config_server(fusion_artifact, folder, env, nofile, verify, **options)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def fuzzed(
    cli_command: list[str], fusion_artifact: Artifact, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server for the schema fuzzer (faces on), with small limits so that each case is cheap."""
    srv = start_server(
        cli_command,
        fusion_artifact,
        tmp_path_factory.mktemp("fuzz") / "server.log",
        "--max-body-mb", "1",
        "--max-crops", "8",
        "--max-pixels", "1000000",
        "--body-timeout", "2",
        "--timeout", "5",
    )  # fmt: skip
    yield srv
    srv.stop()


def release_jpeg(shared: Path, name: str = "image00002.jpg") -> bytes:
    """One photo of the AFLW2000 release (450 x 450, one face), as its JPEG bytes."""
    import zipfile

    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        return z.read(f"AFLW2000/{name}")


@pytest.fixture(scope="session")
def face_jpeg(shared: Path) -> bytes:
    return release_jpeg(shared)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl; EC keys are quick)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key

"""Real Ray on loopback: a two-node cluster (`ray start` head and worker) and servers, each
started by the fixtures and stopped by its process id, with every process it started."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 180.0  # Ray, its workers and the engine on a busy 2-core machine
STOP_TIMEOUT_S = 30.0


def ray_env() -> dict[str, str]:
    """This process's environment (the test cache and mirror included), and token auth: the
    cluster's token (`ray start --head` makes one in ~/.ray) is needed by every process that
    joins it, the worker node and the servers given --address."""
    return {**os.environ, "RAY_AUTH_MODE": "token"}


WORKER_RESOURCE = "worker_node"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: children, grandchildren...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def title(pid: int) -> str:
    """A process's command line (Ray names its workers `ray::ServeReplica:<app>:<name>`)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def stop_tree(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop `proc` and everything it started, by pid: SIGTERM to it; what is left of its tree
    a moment after it exits gets SIGTERM, then SIGKILL. Returns the titles of the processes
    that outlived it (Ray's node agents take a while to notice that their raylet went)."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    left = _wait_gone(tree | descendants(proc.pid), 2.0)
    names = [title(p) or str(p) for p in left]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):  # it went meanwhile
                os.kill(pid, sig)
        left = _wait_gone(left, 5.0)
    assert not left, f"processes still alive after SIGKILL: {left}"
    return names


def _wait_gone(pids: set[int] | list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


@dataclass
class RayNode:
    proc: subprocess.Popen
    log: Path
    address: str  # the head's GCS address, 127.0.0.1:PORT
    resources: dict[str, float] = field(default_factory=dict)  # custom ones it declares

    def replicas(self, app: str) -> list[int]:
        """Pids of the Serve replicas of application `app` running on this node."""
        return sorted(
            p
            for p in descendants(self.proc.pid)
            if title(p).startswith(f"ray::ServeReplica:{app}:") and alive(p)
        )


def _ports(*names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(free_port()))]


NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


def start_node(log: Path, *args: str) -> subprocess.Popen:
    """`ray start --block ...` on loopback with free ports; returns once the node runs."""
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--block",
        "--node-ip-address", "127.0.0.1",
        "--disable-usage-stats",
        "--min-worker-port", "0",
        "--max-worker-port", "0",
        *_ports(*NODE_PORTS),
        *args,
    ]  # fmt: skip
    # No drain on SIGTERM: it waits up to 30 s for Serve proxies, and these tests run none.
    env = {**ray_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    stop_tree(proc)
    pytest.fail(f"ray start did not start a node: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RayNode, RayNode]]:
    """A head node and a worker node on this machine, one CPU each; only the worker has the
    custom resource `worker_node`, so a replica that asks for it runs there."""
    folder = tmp_path_factory.mktemp("ray")
    port = free_port()
    head_proc = start_node(
        folder / "head.log",
        "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
        *_ports("ray-client-server-port"),
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    head = RayNode(head_proc, folder / "head.log", address)
    try:
        worker_proc = start_node(
            folder / "worker.log",
            "--address", address, "--num-cpus", "1",
            "--resources", json.dumps({WORKER_RESOURCE: 4}),
        )  # fmt: skip
    except BaseException:
        stop_tree(head_proc)
        raise
    worker = RayNode(worker_proc, folder / "worker.log", address, {WORKER_RESOURCE: 4})
    yield head, worker
    # The worker first: a head that goes first leaves it retrying for a while. What outlives
    # `ray start` (its node agents, for a while) is stopped by pid.
    stop_tree(worker_proc)
    stop_tree(head_proc)


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    stdout: Path
    stderr: Path
    stopped: list[str] = field(default_factory=list)

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stop(self) -> list[str]:
        """Stop it by its pid; returns the processes it left behind (killed by pid)."""
        if not self.stopped:
            self.stopped = ["(stopped)", *stop_tree(self.proc, 60.0)]
        return self.stopped[1:]


def start_server(cmd: list[str], folder: Path, env: dict[str, str] | None = None) -> Server:
    """A server command that prints `listening on http://127.0.0.1:PORT` once it serves;
    returns when /readyz answers 200."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "stdout.log", folder / "stderr.log"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env or ray_env())
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", out.read_text())
        if match:
            server = Server(proc, f"http://127.0.0.1:{match.group(1)}", out, err)
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            break
        time.sleep(0.2)
    stop_tree(proc)
    pytest.fail(f"the server did not start: {err.read_text(errors='replace')[-3000:]}")


# The options of every server of these tests (small limits: the limit tests stay cheap).
SERVE_OPTIONS = (
    "--port", "0",
    "--max-batch", "32",
    "--max-wait-ms", "5",
    "--max-body-mb", "2",
    "--max-crops", "64",
    "--max-pixels", "4000000",
    "--body-timeout", "1",
    "--timeout", "20",
)  # fmt: skip


@pytest.fixture(scope="session")
def launch() -> Callable[..., Server]:
    """`launch(cmd, folder, env=None)`: a server process, ready (see start_server)."""
    return start_server


@pytest.fixture(scope="session")
def serve_options() -> tuple[str, ...]:
    return SERVE_OPTIONS

import functools
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsanet.assets.fetch import cache_path, fetch
from fsanet.assets.zoo import VARIANTS, RemoteFile
from fsanet.cli import main
from fsanet.core.errors import ChecksumError, FetchError
from fsanet.core.files import sha256_file

PAYLOAD = b"fsanet test payload\n" * 1000


def _remote(url: str = "http://127.0.0.1:9/none", payload: bytes = PAYLOAD) -> RemoteFile:
    return RemoteFile("test-file", url, hashlib.sha256(payload).hexdigest(), "models/t/test.bin")


def _no_leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir()] if directory.exists() else []


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FSANET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FSANET_MIRROR", raising=False)
    return tmp_path / "home"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_real_graph_comes_from_the_mirror_then_the_cache(shared, home, monkeypatch):
    variant = VARIANTS["capsule"]
    path = fetch(variant.file, shared)
    assert path == cache_path(variant.file) and path.parent.parent == home
    assert sha256_file(path) == variant.file.sha256
    # No mirror any more: the verified cache answers.
    assert fetch(variant.file) == path


def test_flat_mirror_layout_works(tmp_path, home):
    mirror = tmp_path / "flat"
    mirror.mkdir()
    (mirror / "test.bin").write_bytes(PAYLOAD)
    assert fetch(_remote(), mirror).read_bytes() == PAYLOAD


def test_checksum_mismatch_in_mirror_leaves_nothing(tmp_path, home):
    mirror = tmp_path / "mirror"
    (mirror / "models" / "t").mkdir(parents=True)
    (mirror / "models" / "t" / "test.bin").write_bytes(b"not the pinned file")
    with pytest.raises(ChecksumError, match=r"test\.bin") as e:
        fetch(_remote(), mirror)
    assert "\n" not in str(e.value)
    assert _no_leftovers(home / "files") == []


def test_damaged_cache_file_is_fetched_again(tmp_path, home):
    mirror = tmp_path / "flat"
    mirror.mkdir()
    (mirror / "test.bin").write_bytes(PAYLOAD)
    remote = _remote()
    path = fetch(remote, mirror)
    path.write_bytes(b"truncated")
    assert fetch(remote, mirror).read_bytes() == PAYLOAD


def test_download_over_http(server, tmp_path, home):
    (tmp_path / "www" / "test.bin").write_bytes(PAYLOAD)
    path = fetch(_remote(f"{server}/test.bin"))
    assert path.read_bytes() == PAYLOAD


def test_download_with_wrong_checksum_leaves_nothing(server, tmp_path, home):
    (tmp_path / "www" / "test.bin").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="expected"):
        fetch(_remote(f"{server}/test.bin"))
    assert _no_leftovers(home / "files") == []


def test_offline_without_mirror_names_url_and_mirror_option(server, home):
    with pytest.raises(FetchError) as e:
        fetch(_remote(f"{server}/missing.bin"))
    message = str(e.value)
    assert f"{server}/missing.bin" in message and "--mirror" in message
    assert "FSANET_MIRROR" in message and "\n" not in message
    assert _no_leftovers(home / "files") == []


def test_cli_fetch_json(shared, capsys):
    assert main(["fetch", "capsule", "yunet", "--mirror", str(shared), "--json", "-q"]) == 0
    out = capsys.readouterr().out
    assert '"fsanet_capsule_3_16_2_21_5"' in out and '"yunet"' in out


def test_cli_fetch_missing_file_is_one_line_exit_1(tmp_path, home, capsys, monkeypatch):
    # A registered file that the mirror lacks and whose URL cannot be reached (a loopback port
    # nobody listens on: no network needed): `fsanet fetch` says so in one line, exit 1.
    import socket

    from fsanet.assets import zoo

    with socket.socket() as probe:  # a port that was free a moment ago and is closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/test.bin"
    monkeypatch.setitem(zoo.FILES, "test-file", _remote(url))
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["fetch", "test-file", "--mirror", str(empty)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("fsanet: error: "), err
    assert err.count("\n") == 1 and url in err and "--mirror" in err
    assert _no_leftovers(home / "files") == []  # nothing half-written in the cache
    # An unknown name is refused before any of that.
    assert main(["fetch", "nothing-by-this-name", "--mirror", str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fsanet: error: unknown model 'nothing-by-this-name'")
    assert err.count("\n") == 1


# `fsanet fetch capsule` whose copy from the mirror stalls halfway, as a slow disk or network
# would: the test stops the real command there with a signal.
_STALLED_FETCH = """
import shutil, sys, time
from fsanet.cli import main

def stalled_copy(source, target):
    with open(target, "wb") as out:
        out.write(b"half")
    print("COPYING", flush=True)
    time.sleep(60)

shutil.copyfile = stalled_copy
sys.exit(main(["fetch", "capsule", "-q", "--mirror", sys.argv[1]]))
"""


def _stall_fetch(shared: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "FSANET_HOME": str(home)}
    child = subprocess.Popen(
        [sys.executable, "-c", _STALLED_FETCH, str(shared)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "COPYING\n"
    assert [p for p in (home / "files").iterdir() if p.name.endswith(".tmp")]  # mid-write
    return child


def test_sigterm_cleans_up_like_ctrl_c(shared, home):
    child = _stall_fetch(shared, home)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 143
    assert err.strip().splitlines() == ["fsanet: interrupted"]
    assert _no_leftovers(home / "files") == []


def test_a_killed_fetch_leaves_debris_the_next_one_removes(shared, home):
    child = _stall_fetch(shared, home)
    child.kill()  # SIGKILL: no cleanup can run
    child.communicate(timeout=30)
    assert len(_no_leftovers(home / "files")) == 1
    path = fetch(VARIANTS["capsule"].file, shared)
    assert _no_leftovers(home / "files") == [path]

"""The real tritonserver (nvidia-pytriton's binary, python backend on CPU) and `coordgan serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import CoordGANError
from triton_helpers import needs_tritonserver, start_server, write_echo_repo
from triton_models.server import EXIT_TIMEOUT_S, TritonServer, check_repository

COORDGAN = str(Path(sys.executable).parent / "coordgan")


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _infer_echo(module, url: str) -> np.ndarray:
    client = module.InferenceServerClient(url)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    item = module.InferInput("X", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return client.infer("echo", [item]).as_numpy("Y")


def test_repository_refusals(tmp_path):
    with pytest.raises(CoordGANError, match="does not exist"):
        check_repository(tmp_path / "nope")
    with pytest.raises(CoordGANError, match="not a Triton model repository"):
        check_repository(tmp_path)
    with pytest.raises(CoordGANError, match="not an executable tritonserver"):
        TritonServer(write_echo_repo(tmp_path), binary=tmp_path / "missing")


@needs_tritonserver
def test_server_serves_http_and_grpc_and_leaves_nothing(tmp_path):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    repo = write_echo_repo(tmp_path / "repo")
    with start_server(repo) as server:
        for module, url in ((http, server.http_url), (grpc, server.grpc_url)):
            np.testing.assert_array_equal(_infer_echo(module, url), 2 * np.arange(8, dtype=np.float32).reshape(2, 4))
        group = server.process.pid
        assert _processes_mentioning("triton_python_backend_stub"), "the python backend runs no stub"
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # the server and its stubs are gone


@needs_tritonserver
def test_stop_does_not_wait_for_idle_client_connections(tmp_path):
    """A client that keeps its connection open (any pooled HTTP client) must not hold shutdown for
    Triton's default 30 s exit timeout."""
    import tritonclient.http as http

    repo = write_echo_repo(tmp_path / "repo")
    with start_server(repo) as server:
        client = http.InferenceServerClient(server.http_url)
        _infer_echo(http, server.http_url)
        assert client.is_server_live()  # the connection stays open in the client's pool
        started = time.monotonic()
        code = server.stop()
        took = time.monotonic() - started
        assert code in (0, 1), server.log_text()[-2000:]  # 1: Triton had to cut the idle connection
        client.close()
    assert took < EXIT_TIMEOUT_S + 5, f"stopping took {took:.1f} s"


@needs_tritonserver
def test_startup_failure_is_one_sentence(tmp_path):
    repo = write_echo_repo(tmp_path / "repo")
    (repo / "echo" / "1" / "model.py").write_text("this is not python\n")
    with pytest.raises(CoordGANError, match="exited during startup") as info:
        TritonServer(repo, http_port=0, grpc_port=0).start(timeout_s=60)
    assert "\n" not in str(info.value)
    assert not _processes_mentioning(str(repo))


@needs_tritonserver
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_signal(tmp_path, stop_signal):
    import tritonclient.http as http

    repo = write_echo_repo(tmp_path / "repo")
    proc = subprocess.Popen([COORDGAN, "serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    out = "".join(lines)
    assert "model echo: READY" in out, out
    http_url = next(l.split("http://")[1].strip() for l in lines if l.strip().startswith("HTTP"))
    assert http_url.startswith("127.0.0.1:")  # loopback by default
    np.testing.assert_array_equal(_infer_echo(http, http_url), 2 * np.arange(8, dtype=np.float32).reshape(2, 4))
    assert _processes_mentioning(str(repo))
    proc.send_signal(stop_signal)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + rest
    assert "tritonserver stopped" in rest
    assert not _processes_mentioning(str(repo)), "serve left a child process behind"


def test_serve_bad_repository_is_one_sentence(tmp_path):
    proc = subprocess.run([COORDGAN, "serve", "--repo", str(tmp_path / "nope")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error:") and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0

"""The real tritonserver (nvidia-pytriton's binary, python backend on CPU) and `coordgan serve`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_main
from runtime.errors import CoordGANError
from triton_helpers import needs_tritonserver, start_server, write_echo_repo
from triton_models.server import EXIT_TIMEOUT_S, SHM_DIR, TritonServer, check_repository

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


def _living_members(group: int) -> list[int]:
    """The processes of a process group, but zombies (a killed stub whose new parent has not reaped it yet)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _infer_echo(module, url: str) -> np.ndarray:
    client = module.InferenceServerClient(url)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    item = module.InferInput("X", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    try:
        return client.infer("echo", [item]).as_numpy("Y")
    finally:
        client.close()  # an open connection holds up the server's shutdown


def _regions(prefix: str) -> list[Path]:
    """The python backend's shared-memory files of one server (named with its own prefix)."""
    return list(SHM_DIR.glob(f"{prefix}*"))


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One echo server for the tests that only talk to it or start another beside it."""
    with start_server(write_echo_repo(tmp_path_factory.mktemp("running") / "repo")) as server:
        yield server


def test_repository_refusals(tmp_path):
    with pytest.raises(CoordGANError, match="does not exist"):
        check_repository(tmp_path / "nope")
    with pytest.raises(CoordGANError, match="not a Triton model repository"):
        check_repository(tmp_path)
    with pytest.raises(CoordGANError, match="not an executable tritonserver"):
        TritonServer(write_echo_repo(tmp_path), binary=tmp_path / "missing")


def test_exit_keeps_the_log_after_a_failure_but_not_after_ctrl_c(tmp_path, monkeypatch):
    """A stop the user asks for (KeyboardInterrupt) removes the temp log like a clean exit; an error keeps it."""
    monkeypatch.setattr(TritonServer, "start", lambda self: self)  # no binary needed: only the cleanup is tested
    repo = write_echo_repo(tmp_path)
    kept = {}
    for raised in (None, KeyboardInterrupt, RuntimeError):
        server = TritonServer(repo, http_port=0, grpc_port=0)
        try:
            with server:
                server.log_path.write_text("a log line\n")
                if raised:
                    raise raised()
        except (KeyboardInterrupt, RuntimeError):
            pass
        kept[raised and raised.__name__] = server.log_path.exists()
        shutil.rmtree(server.log_path.parent, ignore_errors=True)
    assert kept == {None: False, "KeyboardInterrupt": False, "RuntimeError": True}


@needs_tritonserver
def test_server_serves_http_and_grpc(running):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    for module, url in ((http, running.http_url), (grpc, running.grpc_url)):
        np.testing.assert_array_equal(_infer_echo(module, url), 2 * np.arange(8, dtype=np.float32).reshape(2, 4))
    assert _processes_mentioning("triton_python_backend_stub"), "the python backend runs no stub"
    assert _regions(running.shm_prefix), "the python backend's shared memory lacks the server's own prefix"


@needs_tritonserver
def test_ready_means_our_server_answered(running, tmp_path):
    """Another server on the HTTP port (taken after the pre-start check, as in a race) answers
    health checks while ours loads its models: that is not ours being ready. Ours then fails to
    bind, and the sentence quotes that error from its log (not a CUDA notice) and keeps the log."""
    server = TritonServer(write_echo_repo(tmp_path / "repo"), http_port=0, grpc_port=0, log_path=tmp_path / "log")
    server.http_port = running.http_port
    with pytest.raises(CoordGANError, match=r"^tritonserver exited during startup \(code 1\): failed to start HTTP "
                                            rf"service: Unavailable - Socket '127.0.0.1:{running.http_port}' already "
                                            r"in use \(log: .*\)\.$"):
        server.start(timeout_s=60)
    assert server.log_path.is_file() and not _regions(server.shm_prefix)
    assert running.is_ready()


@needs_tritonserver
def test_metrics_port_taken_after_the_check_is_not_ready(tmp_path):
    """Triton binds the metrics port only after HTTP answers ready: readiness waits for every port."""
    server = TritonServer(write_echo_repo(tmp_path / "repo"), http_port=0, grpc_port=0, metrics_port=0,
                          log_path=tmp_path / "log")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server.metrics_port = blocker.getsockname()[1]
        with pytest.raises(CoordGANError) as info:
            server.start(timeout_s=60)
    message = str(info.value)
    assert (f"exited during startup (code 1): failed to start Metrics service: Unavailable - Socket "
            f"'127.0.0.1:{server.metrics_port}' already in use (log: {server.log_path}).") in message, message
    assert server.log_path.is_file()


@needs_tritonserver
def test_startup_failure_names_the_model_and_the_cause(tmp_path, monkeypatch, capsys):
    """`serve` on a model that cannot load: one sentence with the model and the cause from the log
    (not the python backend's stack), and the temp log it names is kept."""
    repo = write_echo_repo(tmp_path / "repo")
    (repo / "echo" / "1" / "model.py").write_text("this is not python\n")
    code, out, err = run_main(monkeypatch, capsys, "serve", "--repo", repo, "--http-port", 0, "--grpc-port", 0)
    match = re.fullmatch(r"Error: tritonserver exited during startup \(code 1\): model echo failed to load: "
                         r"NameError: name 'this' is not defined \(log: (.*)\)\.\n", err)
    assert code == 1 and out == "" and match, err
    log = Path(match.group(1))
    try:
        assert "At:" in log.read_text()  # the stack is there, left out of the sentence
    finally:
        shutil.rmtree(log.parent)
    assert not _processes_mentioning(str(repo))


@needs_tritonserver
def test_stop_leaves_nothing_and_does_not_wait_for_idle_clients(tmp_path):
    """A client that keeps its connection open (any pooled HTTP client) must not hold shutdown for
    Triton's default 30 s exit timeout; after stop no process of its group and no shared memory."""
    import tritonclient.http as http

    with start_server(write_echo_repo(tmp_path / "repo")) as server:
        client = http.InferenceServerClient(server.http_url)
        assert client.is_server_live()  # the connection stays open in the client's pool
        assert _regions(server.shm_prefix)
        started = time.monotonic()
        code = server.stop()
        took = time.monotonic() - started
        assert code in (0, 1), server.log_text()[-2000:]  # 1: Triton had to cut the idle connection
        client.close()
    assert took < EXIT_TIMEOUT_S + 5, f"stopping took {took:.1f} s"
    assert not _living_members(server.process.pid), "the server or a stub outlived stop"
    assert not _regions(server.shm_prefix)


@needs_tritonserver
def test_killed_server_leaves_no_shared_memory(tmp_path):
    """A server killed outright cannot unlink its python backend's regions in /dev/shm; stop does."""
    with start_server(write_echo_repo(tmp_path / "repo")) as server:
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert _regions(server.shm_prefix)  # what the crash left
    assert not _regions(server.shm_prefix)


@needs_tritonserver
@pytest.mark.parametrize("stop_signal, code, sentence", [(signal.SIGINT, 130, "Interrupted."),
                                                         (signal.SIGTERM, 143, "Stopped by SIGTERM."),
                                                         (signal.SIGHUP, 129, "Stopped by SIGHUP.")])
def test_serve_stops_cleanly_on_signal(tmp_path, stop_signal, code, sentence):
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed) end `serve` as any command (exit 130 / 143 /
    129, one sentence), with its server, stubs, shared memory and temp log gone."""
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
    (server_pid,) = _processes_mentioning(f"--model-repository={repo}")
    command = (Path("/proc") / str(server_pid) / "cmdline").read_bytes().decode().split("\0")
    prefix = next(a for a in command if "shm-region-prefix-name=" in a).split("=")[-1]
    assert _regions(prefix)
    log = Path(lines[0].split("(log: ")[1].rstrip(")\n"))
    proc.send_signal(stop_signal)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out + rest
    assert rest.splitlines() == ["tritonserver stopped (exit code 0).", sentence], rest
    assert not _processes_mentioning(str(repo)), "serve left a child process behind"
    assert not _regions(prefix) and not log.parent.exists()


@needs_tritonserver
def test_serve_stopped_while_starting_leaves_nothing(tmp_path):
    """SIGTERM while the models load: exit 143 with its sentence, no process, shared memory or temp log left."""
    repo = write_echo_repo(tmp_path / "repo")
    proc = subprocess.Popen([COORDGAN, "serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (stubs := _processes_mentioning(f"{repo}/echo")) and time.monotonic() < deadline:
        time.sleep(0.05)  # a stub runs for the model being loaded
    assert stubs and proc.poll() is None, proc.communicate()
    (server_pid,) = _processes_mentioning(f"--model-repository={repo}")
    command = (Path("/proc") / str(server_pid) / "cmdline").read_bytes().decode().split("\0")
    prefix = next(a for a in command if "shm-region-prefix-name=" in a).split("=")[-1]
    scratch = next(Path(a.split("=", 1)[1]).parent for a in command if a.startswith("--backend-directory="))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err == "Stopped by SIGTERM.\n", (out, err)
    assert not _processes_mentioning(str(repo)) and not _regions(prefix) and not scratch.exists()


def test_serve_bad_repository_is_one_sentence(tmp_path):
    proc = subprocess.run([COORDGAN, "serve", "--repo", str(tmp_path / "nope")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error:") and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0

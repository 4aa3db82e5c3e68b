"""`coordgan serve` refuses bad options before it starts anything: ports out of range, given twice
or in use, and a start-up timeout that is not positive (issue 26 item 7). No tritonserver runs here."""

from __future__ import annotations

import socket

import pytest

from cli_helpers import run_main
from triton_helpers import write_echo_repo
from triton_models.server import check_ports, first_error


@pytest.fixture
def listening():
    """A port something listens on (what a server already running there looks like to a bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_serve_refuses_bad_ports_and_timeouts_before_starting(tmp_path, monkeypatch, capsys, listening):
    repo = write_echo_repo(tmp_path / "repo")
    cases = [
        (("--startup-timeout", -1), "--startup-timeout must be greater than 0 seconds, got -1."),
        (("--startup-timeout", 0), "--startup-timeout must be greater than 0 seconds, got 0."),
        (("--startup-timeout", "nan"), "--startup-timeout must be greater than 0 seconds, got nan."),
        (("--http-port", 70000), "--http-port must be a TCP port from 1 to 65535 (0: any free one), got 70000."),
        (("--http-port", -1), "--http-port must be a TCP port from 1 to 65535 (0: any free one), got -1."),
        (("--grpc-port", 65536), "--grpc-port must be a TCP port from 1 to 65535"),
        (("--metrics-port", -5), "--metrics-port must be a TCP port from 1 to 65535"),
        (("--http-port", 8500, "--grpc-port", 8500), "--http-port and --grpc-port are both 8500: each endpoint needs"),
        (("--http-port", 0, "--grpc-port", 8502, "--metrics-port", 8502),
         "--grpc-port and --metrics-port are both 8502"),
        (("--http-port", listening, "--grpc-port", 0), f"--http-port {listening} is in use on 127.0.0.1 (another "
                                                      "server?): stop what holds it or pick another port"),
        (("--http-port", 0, "--grpc-port", listening), f"--grpc-port {listening} is in use on 127.0.0.1"),
        (("--http-port", 0, "--grpc-port", 0, "--metrics-port", listening), f"--metrics-port {listening} is in use"),
        (("--host", "192.0.2.1"), "--host 192.0.2.1 is not an address of this machine."),  # TEST-NET-1
        (("--host", "::1"), "--host ::1: IPv6 addresses are not supported; use an IPv4 address such as 127.0.0.1"),
    ]
    log = tmp_path / "server.log"
    for options, message in cases:
        code, out, err = run_main(monkeypatch, capsys, "serve", "--repo", repo, "--log", log, *options)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (options, err)
        assert out == "" and not log.exists(), options  # refused before tritonserver started


def test_free_ports_are_distinct_and_given_ones_kept():
    ports = check_ports("127.0.0.1", {"--http-port": 0, "--grpc-port": 0, "--metrics-port": 0})
    assert len(set(ports.values())) == 3 and all(1 <= p <= 65535 for p in ports.values())
    kept = check_ports("127.0.0.1", {"--http-port": ports["--http-port"], "--grpc-port": 0, "--metrics-port": None})
    assert kept["--http-port"] == ports["--http-port"] and kept["--metrics-port"] is None
    assert kept["--grpc-port"] != kept["--http-port"]


# lines of real tritonserver 2.51 logs (nvidia-pytriton 0.7.0), in their order
CPU_NOTICES = '''\
W1207 09:20:09.988013 8446 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, pinned memory pool will not be available: CUDA driver version is insufficient for CUDA runtime version"
E1207 09:20:09.988126 8446 server.cc:241] "CudaDriverHelper has not been initialized."
Error: Failed to initialize NVML
W1207 09:20:30.023187 9105 metrics.cc:798] "DCGM unable to start: DCGM initialization error"
'''
GRPC_PORT_TAKEN = '''\
E1207 09:20:11.310390607    8446 chttp2_server.cc:1060]                UNKNOWN:No address added out of total 1 resolved for '127.0.0.1:18001' {created_time:"2026-12-07T09:20:11.310344158+00:00", children:[UNKNOWN:Unable to configure socket {fd:6}]}
E1207 09:20:11.315081 8446 main.cc:245] "failed to start GRPC service: Unavailable - Socket '127.0.0.1:18001' already in use "
'''
MODEL_FAILED = '''\
E1207 09:21:27.261593 11447 backend_model.cc:692] "ERROR: Failed to create instance: CoordGANError: ONNX Runtime cannot load /r/coordgan_encoder/1/model.onnx: Protobuf parsing failed.\\n\\nAt:\\n  /work/main/runtime/backends/ort_backend.py(95): __init__\\n"
E1207 09:21:27.261715 11447 model_lifecycle.cc:642] "failed to load 'coordgan_encoder' version 1: Internal: CoordGANError: ONNX Runtime cannot load /r/coordgan_encoder/1/model.onnx: Protobuf parsing failed.\\n\\nAt:\\n  /work/main/runtime/backends/ort_backend.py(95): __init__\\n"
E1207 09:21:27.261788 11447 model_repository_manager.cc:703] "Invalid argument: ensemble 'coordgan_frame_labels' depends on 'coordgan_encoder' which has no loaded version."
error: creating server: Internal - failed to load all models
'''


def test_first_error_is_the_real_one():
    """Not the CPU-only CUDA/NVML notices, Triton's sentence before grpc's internals, and a model
    that failed to load named with its cause, without the python backend's stack."""
    assert first_error(CPU_NOTICES) is None
    assert first_error(CPU_NOTICES + GRPC_PORT_TAKEN) == \
        "failed to start GRPC service: Unavailable - Socket '127.0.0.1:18001' already in use"
    assert first_error(CPU_NOTICES + MODEL_FAILED) == ("model coordgan_encoder failed to load: ONNX Runtime cannot "
                                                       "load /r/coordgan_encoder/1/model.onnx: Protobuf parsing failed")

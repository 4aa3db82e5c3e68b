"""`coordgan serve` refuses bad options before it starts anything: ports out of range, given twice
or in use, and a start-up timeout that is not positive (issue 26 item 7). No tritonserver runs here."""

from __future__ import annotations

import socket

import pytest

from cli_helpers import run_main
from triton_helpers import write_echo_repo
from triton_models.server import check_ports


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
        (("--http-port", 0, "--grpc-port", 8502, "--metrics-port", 8502), "--grpc-port and --metrics-port are both 8502"),
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

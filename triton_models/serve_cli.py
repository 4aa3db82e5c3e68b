"""`coordgan serve --repo REPO`: a real tritonserver in the foreground until Ctrl-C or SIGTERM.

Prints the endpoints and each model's state once the server is ready, then waits; on Ctrl-C or
SIGTERM it stops the server (in-flight requests finish) and leaves no child process behind.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Optional

import typer

from runtime.errors import CoordGANError


class _Shutdown(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Shutdown()


def _model_states(server) -> list[tuple[str, str]]:
    request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        index = json.load(r)
    return [(m["name"], m.get("state", "?")) for m in index]


def serve(
    repo: Path = typer.Option(..., "--repo", help="Triton model repository (from `coordgan triton build`)."),
    tritonserver: Optional[Path] = typer.Option(None, "--tritonserver", help="tritonserver binary (default: the "
                                                "one in the nvidia-pytriton wheel, python backend, CPU)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it to the network)."),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP/REST port (0: a free one)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port (0: a free one)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus metrics port (default: "
                                               "metrics off)."),
    log: Optional[Path] = typer.Option(None, "--log", help="Append the server's log here (default: a temp file)."),
    startup_timeout: float = typer.Option(120.0, "--startup-timeout", help="Seconds to wait for readiness."),
):
    """Serve a model repository with a real tritonserver until Ctrl-C / SIGTERM."""
    from triton_models.server import TritonServer

    server = TritonServer(repo, binary=tritonserver, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, log_path=log)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server.start(timeout_s=startup_timeout)
        print(f"tritonserver ready (log: {server.log_path})")
        print(f"  HTTP  http://{server.http_url}")
        print(f"  gRPC  {server.grpc_url}")
        if server.metrics_url:
            print(f"  metrics  http://{server.metrics_url}/metrics")
        for name, state in _model_states(server):
            print(f"  model {name}: {state}")
        print("Ctrl-C or SIGTERM stops it.", flush=True)
        while server.alive():
            time.sleep(0.5)
        raise CoordGANError(f"tritonserver stopped on its own (code {server.process.returncode}): "
                            f"{server.first_error()} (log: {server.log_path}).")
    except (KeyboardInterrupt, _Shutdown):
        code = server.stop()
        print(f"tritonserver stopped (exit code {code}).")
    finally:
        server.stop()
        if log is None and server.process is not None and server.process.returncode == 0:
            server.cleanup()
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)

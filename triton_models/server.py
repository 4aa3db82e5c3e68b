"""A real `tritonserver` as a child process: found, started, waited for, stopped with nothing left.

    with TritonServer("repo", http_port=0, grpc_port=0) as server:    # 0: a free port
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

By default the binary is the one shipped in the `nvidia-pytriton` wheel (python backend, runs on
CPU); any other binary (e.g. /opt/tritonserver/bin/tritonserver in NVIDIA's container) can be given
and then keeps its own backends. Facts about the wheel's server this module works around:
- its python backend needs a backend directory holding libtriton_python.so, the python utils and
  the stub for this interpreter; they are symlinked, not copied, because the binaries find their
  bundled libraries through an $ORIGIN rpath that a copy would break;
- the stub embeds the system libpython and finds this environment's packages only through the
  `python3` first on PATH, so this environment's bin directory goes first.
The server runs in its own process group: stopping it (SIGTERM, then SIGKILL after a timeout)
also takes down its python-backend stubs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from runtime.errors import CoordGANError

_INSTALL_HINT = "pip install --no-deps 'nvidia-pytriton>=0.5' (its binary is all that is used)"


EXIT_TIMEOUT_S = 5  # seconds Triton gives in-flight requests once asked to stop


def pytriton_server_dir() -> Path:
    """<site-packages>/pytriton/tritonserver, without importing pytriton (its API is not needed)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise CoordGANError(f"No tritonserver found: install the one in the nvidia-pytriton wheel with "
                            f"{_INSTALL_HINT}, or pass --tritonserver PATH.")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def python_backend_dir(dest: Path) -> Path:
    """A --backend-directory for the wheel's server: python/ with symlinks (see the module doc)."""
    root = pytriton_server_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = [root / "backends" / "python" / "libtriton_python.so",
               root / "backends" / "python" / "triton_python_backend_utils.py",
               root / "python_backend_stubs" / version / "triton_python_backend_stub"]
    missing = [str(p) for p in sources if not p.exists()]
    if missing:
        raise CoordGANError(f"The nvidia-pytriton wheel lacks {missing[0]} (no python backend for Python "
                            f"{version}?); use Python 3.8-3.13 or pass --tritonserver PATH.")
    (dest / "python").mkdir(parents=True, exist_ok=True)
    for source in sources:
        (dest / "python" / source.name).symlink_to(source)
    return dest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_repository(repo: Path) -> list[str]:
    """The model names of a repository (folders with a config.pbtxt); one sentence if there are none."""
    repo = Path(repo)
    if not repo.is_dir():
        raise CoordGANError(f"Model repository {repo} does not exist or is not a folder.")
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    if not models:
        raise CoordGANError(f"{repo} is not a Triton model repository: no <model>/config.pbtxt in it "
                            "(build one with `coordgan triton build`).")
    return models


class TritonServer:
    def __init__(self, repo, *, binary=None, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int | None = None, log_path=None,
                 extra_args: tuple[str, ...] = ()):
        self.repo = Path(repo).resolve()
        self.models = check_repository(self.repo)
        self.binary = Path(binary) if binary else None
        if self.binary and not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise CoordGANError(f"{self.binary} is not an executable tritonserver.")
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port if metrics_port is None else (metrics_port or free_port(host))
        self.extra_args = tuple(extra_args)
        self._scratch = Path(tempfile.mkdtemp(prefix="coordgan-triton-"))
        self.log_path = Path(log_path) if log_path else self._scratch / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"{self.host}:{self.metrics_port}"

    def command(self) -> list[str]:
        binary = self.binary or pytriton_server_dir() / "bin" / "tritonserver"
        cmd = [str(binary), f"--model-repository={self.repo}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}"]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        # in-flight requests get this long after SIGTERM; Triton's default (30 s) also waits that
        # long for any client that merely keeps an idle connection open, which makes Ctrl-C look hung
        cmd.append(f"--exit-timeout-secs={EXIT_TIMEOUT_S}")
        if self.binary is None:
            cmd.append(f"--backend-directory={python_backend_dir(self._scratch / 'backends')}")
        return cmd + list(self.extra_args)

    def _environment(self) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self._environment(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise CoordGANError(f"tritonserver exited during startup (code {code}): {self.first_error()} "
                                    f"(log: {self.log_path}).")
            if time.monotonic() > deadline:
                self.stop()
                raise CoordGANError(f"tritonserver was not ready after {timeout_s:.0f} s (log: {self.log_path}).")
            time.sleep(0.2)
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def first_error(self) -> str:
        """The server's first real error line (its CPU-only CUDA notice is not one)."""
        for line in self.log_text().splitlines():
            if (line.startswith("E") or line.startswith("error:")) and "CudaDriverHelper" not in line:
                return line.split("] ", 1)[-1].strip().strip('"')[:300]
        return "no error line in its log"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests and unloads), SIGKILL after timeout_s; returns the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            try:  # whatever is left of the group: the server if it hung, stubs if they outlived it
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = self.process.wait()
        return code

    def cleanup(self) -> None:
        """Remove the scratch folder (backend links, and the log unless log_path was given)."""
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()

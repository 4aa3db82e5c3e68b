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

Before starting, the ports are checked (1..65535, distinct, free on the host), so a server already
on them is refused in one sentence. "Ready" means the server we started answered: Triton loads its
models before it binds its ports, and until then another server on the same port (taken after the
check) would answer health checks. So each server gets its own --id, which its HTTP metadata must
report, and on Linux every port must be a listening socket of its process group (the metrics port
is bound after HTTP answers).
The python backend's shared-memory regions get a prefix of their own, so that what a killed server
leaves in /dev/shm is removed without touching other servers' regions.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from runtime.errors import CoordGANError

_INSTALL_HINT = "pip install --no-deps 'nvidia-pytriton>=0.5' (its binary is all that is used)"


EXIT_TIMEOUT_S = 5  # seconds Triton gives in-flight requests once asked to stop
SHM_DIR = Path("/dev/shm")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # an http_proxy must not see loopback


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


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound as Triton binds (SO_REUSEADDR: a port in TIME_WAIT is free, a listening one is not)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except BaseException:
        s.close()
        raise
    return s


def check_ports(host: str, ports: dict[str, int | None]) -> dict[str, int | None]:
    """{option: port} with each 0 replaced by a free port; one sentence for a port out of range,
    given twice or not free on `host`. None (an endpoint turned off) stays None."""
    if ":" in host:  # Triton writes host:port unbracketed, which its gRPC endpoint cannot parse
        raise CoordGANError(f"--host {host}: IPv6 addresses are not supported; use an IPv4 address such as "
                            "127.0.0.1 or 0.0.0.0.")
    for option, port in ports.items():
        if port is not None and not 0 <= port <= 65535:
            raise CoordGANError(f"{option} must be a TCP port from 1 to 65535 (0: any free one), got {port}.")
    seen: dict[int, str] = {}
    for option, port in ports.items():
        if port:
            if port in seen:
                raise CoordGANError(f"{seen[port]} and {option} are both {port}: each endpoint needs a port "
                                    "of its own.")
            seen[port] = option
    held = []  # free ports stay bound until all are chosen, so that no two are the same
    try:
        for option, port in ports.items():
            if port is None:
                continue
            try:
                held.append(_bind(host, port))
            except socket.gaierror as exc:
                raise CoordGANError(f"--host {host} is not an address of this machine ({exc.strerror}).") from None
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CoordGANError(f"{option} {port} is in use on {host} (another server?): stop what holds "
                                        "it or pick another port (0: any free one).") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise CoordGANError(f"--host {host} is not an address of this machine.") from None
                raise CoordGANError(f"{option} {port} cannot be used on {host}: {exc.strerror or exc}.") from None
        chosen = iter(s.getsockname()[1] for s in held)
        return {option: None if port is None else next(chosen) for option, port in ports.items()}
    finally:
        for s in held:
            s.close()


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


def listening_ports(group: int) -> set[int] | None:
    """The TCP ports the processes of a process group listen on (Linux /proc; a wrapper script that
    forks the server counts too), None where /proc cannot tell."""
    sockets = set()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != group:  # state, ppid, pgrp
                    continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        for fd in fds:
            try:
                sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... inode
            if fields[3] == "0A" and f"socket:[{fields[9]}]" in sockets:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# Triton's log lines: E1207 09:20:53.552333 10975 model_lifecycle.cc:642] "message"
_LOG_LINE = re.compile(r"^([EWI])\d{4} [\d:.]+\s+\d+ [\w.-]+:\d+\]\s*(.*)$")
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version \d+: (?:[A-Z][a-z]+(?: [a-z]+)*: )?(.*)", re.S)
_NOISE = ("CudaDriverHelper has not been initialized",)  # every start without a GPU logs it


def _message(raw: str) -> str:
    """A logged message as text: Triton quotes its messages with JSON escapes (\\n inside)."""
    if len(raw) > 1 and raw[0] == raw[-1] == '"':
        try:
            return json.loads(raw)
        except ValueError:
            return raw[1:-1].replace("\\n", "\n")
    return raw


def _clause(text: str, limit: int = 600) -> str:
    """The cause alone: its first line (the python backend appends 'At:' and the stack), without our
    exception type's name."""
    text = text.strip().splitlines()[0] if text.strip() else text
    text = text.removeprefix("CoordGANError: ").strip()
    return text[:limit].rstrip(" .;")


def first_error(log_text: str) -> str | None:
    """The real first error of a Triton log as a clause: a model that failed to load (named, with its
    cause), else Triton's own first error line, else the first other one (grpc's, or 'error: ...')."""
    own, other = [], []
    for line in log_text.splitlines():
        match = _LOG_LINE.match(line)
        if match and match.group(1) == "E":
            raw = match.group(2)
            text = _message(raw)
            if not any(noise in text for noise in _NOISE):
                (own if raw.startswith('"') else other).append(text)  # grpc's own lines are not quoted
        elif line.startswith("error: "):  # tritonserver's last word, e.g. "error: creating server: ..."
            other.append(line.removeprefix("error: "))
    for text in own:
        match = _LOAD_FAILURE.search(text)
        if match:
            return f"model {match.group(1)} failed to load: {_clause(match.group(2))}"
    return _clause((own + other)[0]) if own + other else None


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
        ports = check_ports(host, {"--http-port": http_port, "--grpc-port": grpc_port,
                                   "--metrics-port": metrics_port})
        self.http_port, self.grpc_port, self.metrics_port = ports.values()
        self.extra_args = tuple(extra_args)
        token = uuid.uuid4().hex[:12]
        self.server_id = f"coordgan-{token}"  # what our server's metadata reports (see the module doc)
        self.shm_prefix = f"coordgan_{token}_"
        self._scratch = Path(tempfile.mkdtemp(prefix="coordgan-triton-"))
        self.log_path = Path(log_path) if log_path else self._scratch / "tritonserver.log"
        self._log_start = 0  # an appended log's earlier runs are not this run's errors
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
        cmd = [str(binary), f"--model-repository={self.repo}", f"--id={self.server_id}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
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
        if not timeout_s > 0:
            raise CoordGANError(f"The start-up timeout must be greater than 0 seconds, got {timeout_s:g}.")
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self._environment(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                self._fail(f"tritonserver exited during startup (code {code}): {self.first_error()}")
            waiting_for = self.not_ready_because()
            if waiting_for is None:
                return self
            if time.monotonic() > deadline:
                self._fail(f"tritonserver was not ready after {timeout_s:g} s: {waiting_for}")
            time.sleep(0.2)

    def _fail(self, clause: str):
        self.stop()
        self.cleanup(keep_log=True)  # the sentence names it
        raise CoordGANError(f"{clause} (log: {self.log_path}).")

    def http(self, path: str, body: bytes | None = None, timeout_s: float = 1.0) -> bytes:
        """The answer to GET (or POST body) http://<http_url><path>; an OSError when there is none."""
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=body)
        with _DIRECT.open(request, timeout=timeout_s) as answer:
            return answer.read()

    def model_states(self) -> list[tuple[str, str]]:
        """(name, state) of every model in the repository index, e.g. ("coordgan_encoder", "READY")."""
        index = json.loads(self.http("/v2/repository/index", b"{}", timeout_s=5))
        return [(m["name"], m.get("state", "?")) for m in index]

    def not_ready_because(self) -> str | None:
        """None once our own server is ready on every port, else what it waits for."""
        if not self.alive():
            return "it is not running"
        try:
            name = json.loads(self.http("/v2")).get("name")
        except (OSError, ValueError):  # urllib's errors are OSErrors
            return f"nothing answers on {self.http_url} yet"
        if name != self.server_id:
            return f"another server ({name}) answers on {self.http_url}"
        try:
            self.http("/v2/health/ready")
        except OSError:
            return "its models are not ready yet"
        listening = listening_ports(self.process.pid)
        if listening is not None:
            missing = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p and p not in listening]
            if missing:
                return f"it does not listen on port {missing[0]} yet"
        return None

    def is_ready(self) -> bool:
        return self.not_ready_because() is None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """This run's part of the log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def first_error(self) -> str:
        """The server's real first error (see `first_error`) as a clause, else its log's last line
        (an option this binary does not know, a crash)."""
        text = self.log_text()
        lines = [line for line in text.splitlines() if line.strip()]
        return first_error(text) or (f"its log ends with: {_clause(lines[-1])}" if lines else "its log is empty")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests and unloads), SIGKILL after timeout_s; returns the exit code."""
        if self.process is None:
            return None
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    pass
        finally:  # also after a second Ctrl-C: nothing of ours outlives this
            try:  # whatever is left of the group: the server if it hung, stubs if they outlived it
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = self.process.wait()
            # a killed server or stub cannot unlink its regions; the prefix makes them ours alone
            for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)
        return code

    def cleanup(self, keep_log: bool = False) -> None:
        """Remove the scratch folder: backend links, and the log unless it is kept (or was given)."""
        if keep_log and self.log_path.parent == self._scratch and self.log_path.exists():
            shutil.rmtree(self._scratch / "backends", ignore_errors=True)
        else:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        self.stop()
        # a failure keeps the log to read; a stop the user asked for (Ctrl-C) is no failure: nothing is left
        self.cleanup(keep_log=exc_type is not None and not issubclass(exc_type, KeyboardInterrupt))

"""`coordgan propagate --cluster`: a dataset's sequences fanned out over a Ray cluster.

    from runtime.propagation.cluster import ClusterOptions, ModelSpec, run_cluster

    jobs = plan("DAVIS/", "masks/")                      # runtime.propagation.jobs
    result = run_cluster(jobs, PropagateOptions(), ModelSpec("export/encoder.onnx"),
                         ClusterOptions("local", workers=2), "masks/")

Each worker is a Ray actor that opens the model once and propagates whole sequences through the
same sequence code as the in-process path, so a sequence writes exactly what it writes without
Ray, and a sequence is the unit of scheduling and of retry. Only job descriptions (paths) travel,
never frames: the input and OUT lie on a filesystem every worker sees.

Faults: a worker process that dies (killed, out of memory, its node lost) is restarted by Ray and
its sequence is given again, up to `max_retries` more times, with resume on: the retry continues
from the sequence's own resume state and ends with the same bytes. Ray's own task retry is off
(max_task_retries=0) because a retry must run with other options than the first attempt. A
worker that is only unreachable for a while (Ray's ActorUnavailableError: the attempt may still be
running there) is waited for before its sequence goes again, and a retry that finds the sequence's
folder still locked by an earlier attempt goes again a little later; both waits end after
`wait_s`. A sequence that fails with an error of its own (a bad mask) is reported and the others go on.
Ctrl-C kills the workers; every sequence is left resumable.

`local` starts an embedded Ray instance that stays on 127.0.0.1 (no dashboard, usage stats off,
the object store capped); `auto` or HOST:PORT joins a running cluster as `ray.init(address=...)`
does. Ray is imported only here, and only when a cluster run starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from runtime.errors import CoordGANError, first_line
from runtime.fileio import atomic_write
from runtime.io.video import open_frames
from runtime.propagation.output import FolderBusy

SUMMARY_FILE = "cluster_summary.json"
FORMAT = "coordgan-cluster/1"
INSTALL_HINT = "pip install 'coordgan-deploy[cluster]' (or pip install ray)"
_CONNECT_TIMEOUT_S = 5.0  # an unreachable address is refused within this, not after Ray's minute of retries
_POLL_S = 0.2  # how often the driver looks at results and progress
_PUSH_S = 0.1  # how often a worker reports its frame count
_BUSY_RETRY_S = 1.0  # a retry refused by its folder's lock goes again after this


@dataclass(frozen=True)
class ClusterOptions:
    address: str = "local"  # local (embedded, on loopback), auto (RAY_ADDRESS or this machine's cluster), HOST:PORT
    workers: int | None = None  # None: as many as the cluster's CPUs (GPUs) fit, at most one per sequence
    cpus_per_worker: float = 1.0  # also the worker's threads (OMP_NUM_THREADS, which the runtime follows)
    gpus_per_worker: float = 0.0
    max_retries: int = 2  # more attempts of a sequence whose worker died
    # How long a retry waits for an earlier attempt that may still be running: for its unreachable worker
    # to answer, and for its folder's lock to be let go; past this the sequence fails (--resume continues it).
    wait_s: float = 300.0
    object_store_mb: int = 256  # of the embedded instance: job descriptions and summaries are all it holds

    def validate(self) -> None:
        if not self.address:
            raise CoordGANError("--cluster needs local, auto or HOST:PORT.")
        if self.workers is not None and self.workers < 1:
            raise CoordGANError(f"--workers must be at least 1, got {self.workers}.")
        if not self.cpus_per_worker > 0:
            raise CoordGANError(f"--cpus-per-worker must be more than 0, got {self.cpus_per_worker}.")
        if self.gpus_per_worker < 0:
            raise CoordGANError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker}.")
        if self.max_retries < 0:
            raise CoordGANError(f"--max-retries must be 0 or more, got {self.max_retries}.")
        if self.wait_s < 0:
            raise CoordGANError(f"The wait for an earlier attempt must be 0 s or more, got {self.wait_s}.")

    @property
    def local(self) -> bool:
        return self.address == "local"

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


@dataclass(frozen=True)
class ModelSpec:
    """How each worker opens the model (runtime.propagation.model.open_model): an encoder artifact
    every node can open (a path on the shared filesystem, a .plan, a Triton address)."""

    artifact: str
    backend: str | None = None
    device: str = "auto"
    batch: int = 8


def _settled_backend(ray, spec: ModelSpec, cluster: ClusterOptions) -> tuple[str | None, str | None]:
    """(the backend every worker opens, how `auto` chose it or None): `auto` is decided once for all the
    workers, since each one's own trial could pick another backend and a sequence retried on another
    worker would then be refused (the resume fingerprint names the backend). It is decided on a
    worker of the run's size, by a Ray task (_decide_auto), not here: the driver may be another kind of
    machine than the cluster's nodes. On GPU workers auto is ONNX Runtime's CUDA provider, no trial."""
    from runtime.backends import backend_for

    if spec.backend not in (None, "auto") or backend_for(spec.artifact) != "onnxruntime":
        return spec.backend, None
    if cluster.gpus_per_worker > 0 or spec.device == "cuda":
        return "onnxruntime", None
    task = ray.remote(_decide_auto).options(num_cpus=cluster.cpus_per_worker, max_retries=0,
                                            runtime_env={"env_vars": _worker_env(cluster)})
    try:
        name, note, node = ray.get(task.remote(spec, cluster.threads))
    except ray.exceptions.RayError as exc:
        cause = _cause(exc)
        if isinstance(cause, CoordGANError):  # the model does not open: its own sentence
            raise cause from None
        raise CoordGANError(f"Choosing the backend on a worker failed: {_reason(exc)}.") from None
    return name, f"{note}, on {node}"


@dataclass
class SequenceResult:
    sequence: str
    status: str  # done, skipped (complete before), failed
    attempts: int = 0
    worker: int | None = None
    node: str | None = None
    pid: int | None = None
    frames: int | None = None
    frames_processed: int = 0
    resumed_from: int | None = None
    seconds: float | None = None
    reason: str | None = None
    warnings: list = field(default_factory=list)
    summary_digest: str | None = None  # of the summary.json a done or skipped sequence has (summary_digest)


@dataclass
class Progress:
    """What the driver shows: frames done of the total across workers, sequences, workers, retries."""

    frames_done: int = 0
    frames_total: int | None = None
    sequences_done: int = 0
    sequences: int = 0
    workers_alive: int = 0
    workers: int = 0
    retries: int = 0
    started: bool = False  # every worker has its model open
    running: dict = field(default_factory=dict)  # sequence -> {"done", "total", "worker", "pid"}


class ClusterObserver:
    """Hears a cluster run in the driver (subclass it to show it)."""

    def progress(self, progress: Progress) -> None:
        """Called a few times a second."""

    def finished(self, result: SequenceResult) -> None:
        """A sequence is done, skipped or failed for good."""


@dataclass
class ClusterResult:
    address: str
    workers: int
    threads_per_worker: int
    startup_s: float  # connecting (or starting the local instance), auto's choice, until every worker has its model
    seconds: float  # after start-up until the last sequence ended
    sequences: list[SequenceResult]
    backend: str | None = None  # what the workers opened the model with (None: what the artifact names)
    backend_note: str | None = None  # how auto chose it, and on which node

    @property
    def failed(self) -> list[SequenceResult]:
        return [r for r in self.sequences if r.status == "failed"]

    @property
    def frames_processed(self) -> int:
        return sum(r.frames_processed for r in self.sequences)

    @property
    def frames_per_s(self) -> float | None:
        return round(self.frames_processed / self.seconds, 3) if self.seconds > 0 else None

    def to_json(self) -> dict:
        return {"format": FORMAT, "address": self.address, "workers": self.workers,
                "threads_per_worker": self.threads_per_worker, "backend": self.backend,
                "backend_note": self.backend_note, "startup_s": round(self.startup_s, 3),
                "seconds": round(self.seconds, 3), "frames_processed": self.frames_processed,
                "frames_per_s": self.frames_per_s, "failed": len(self.failed),
                "sequences": [{k: v for k, v in asdict(r).items() if k != "warnings"} for r in self.sequences]}


def summary_digest(summary: dict) -> str:
    """A sequence summary's identity: cluster_summary.json records it for every sequence done or skipped,
    so a report can tell whether the sequence folders still hold that run's results (a later run in the
    same folder writes another summary, if only by its times)."""
    kept = {k: v for k, v in summary.items() if k != "skipped"}  # a resumed complete sequence: its file's summary
    text = json.dumps(json.loads(json.dumps(kept)), sort_keys=True)  # as the file reads back: str keys, lists
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_cluster(jobs, options, model: ModelSpec, cluster: ClusterOptions, out, *,
                observer: ClusterObserver | None = None) -> ClusterResult:
    """Propagate the jobs (runtime.propagation.jobs.plan) on Ray workers, longest sequences first;
    OUT/cluster_summary.json is written at the end. Failed sequences are in the result, not raised."""
    cluster.validate()
    options.validate()
    observer = observer or ClusterObserver()
    jobs = [_absolute(job) for job in jobs]
    if len({job.name for job in jobs}) != len(jobs):
        raise CoordGANError("Two sequences share a name; a cluster run tells them apart by name.")
    lengths = {job.name: _length(job) for job in jobs}
    jobs.sort(key=lambda job: (-(lengths[job.name] or 0), job.name))
    model = replace(model, artifact=_absolute_artifact(model.artifact))
    tick = time.perf_counter()
    with _connected(cluster) as ray:
        scheduler = _Scheduler(ray, jobs, lengths, options, model, cluster, observer)
        try:
            scheduler.start()
            startup = time.perf_counter() - tick
            tick = time.perf_counter()
            scheduler.run()
            seconds = time.perf_counter() - tick  # the run, not the shutdown after it
        finally:
            scheduler.stop()  # Ctrl-C too: the workers die, each sequence keeps its resume state
    result = ClusterResult(cluster.address, len(scheduler.workers), cluster.threads, startup, seconds,
                           [scheduler.results[job.name] for job in jobs], backend=scheduler.model.backend,
                           backend_note=scheduler.backend_note)
    with atomic_write(Path(out).absolute() / SUMMARY_FILE, "w") as f:
        json.dump(result.to_json(), f, indent=2)
        f.write("\n")
    return result


# --- the worker ---------------------------------------------------------------------------------

def _propagate(model, job, options, on_frame) -> dict:
    """Every call into the sequence code, in one place: one job through run_jobs, its summary."""
    from runtime.propagation.jobs import run_jobs

    for _, summary in run_jobs(model, [job], options, frames_bar=lambda name: contextlib.nullcontext(on_frame)):
        return summary
    raise AssertionError("run_jobs yielded nothing for one job")


def _node() -> str:
    import ray

    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"


def _worker_env(cluster: ClusterOptions) -> dict:
    return {"OMP_NUM_THREADS": str(cluster.threads)}


def _decide_auto(spec: ModelSpec, threads: int) -> tuple[str, str, str]:
    """A Ray task on a worker's resources: the backend `auto` picks there (by its trial, remembered on
    that node), how, and the node."""
    from runtime.backends.auto import open_auto

    chosen = open_auto(spec.artifact, "cpu", threads=threads, trial_batch=spec.batch)
    chosen.close()
    return chosen.name, chosen.note, _node()


class _Worker:
    """A Ray actor: the model opened once, then whole sequences, one at a time."""

    def __init__(self, index: int, spec: ModelSpec, board: str, warm: tuple[str, str]):
        """warm: the run's lookup path and mode, whose kernels load beside the model's opening."""
        import ray

        import runtime.propagation.jobs  # noqa: F401  (the sequence code's imports, numba's, count as start-up)
        from runtime.lookup import warm_up
        from runtime.propagation.model import open_model

        warm_up(*warm)

        try:
            self.model, self.error = open_model(spec.artifact, backend=spec.backend, device=spec.device,
                                                batch=spec.batch), None
        except Exception as exc:  # told by ready() as the error it is (a constructor's comes back as a traceback)
            self.model, self.error = None, exc
        # by name: a handle among the arguments would keep them in the object store, which a restart needs
        self.board = ray.get_actor(board)
        self.where = {"worker": index, "node": _node(), "pid": os.getpid()}

    def ready(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.where

    def run(self, job, options) -> dict:
        last = [0.0]

        def on_frame(done, total):
            now = time.perf_counter()
            if now - last[0] >= _PUSH_S or done == total:
                last[0] = now
                self.board.update.remote(job.name, {"done": done, "total": total, "worker": self.where["worker"],
                                                    "pid": self.where["pid"]})

        tick = time.perf_counter()
        summary = _propagate(self.model, job, options, on_frame)
        return {**self.where, "summary": summary, "seconds": round(time.perf_counter() - tick, 3)}


class _Board:
    """A Ray actor that holds each running sequence's frame count for the driver's display."""

    def __init__(self):
        self.frames: dict = {}

    def update(self, name: str, entry: dict) -> None:
        self.frames[name] = entry

    def snapshot(self) -> dict:
        return dict(self.frames)


# --- the driver ---------------------------------------------------------------------------------

class _Scheduler:
    """Sequences to idle workers, longest first; a sequence whose worker died goes again (resumed)
    to the next idle worker, the dead one joins again once Ray has restarted it."""

    def __init__(self, ray, jobs, lengths, options, model, cluster, observer):
        self.ray, self.options, self.model, self.cluster, self.observer = ray, options, model, cluster, observer
        self.jobs = {job.name: job for job in jobs}
        self.pending = deque((job.name, 1) for job in jobs)  # (sequence, attempt)
        self.delayed: list = []  # (when, sequence, attempt): a retry its folder's lock refused, to go again
        self.busy_since: dict[str, float] = {}  # sequence -> when a retry of it was first refused by its lock
        self.parked: dict = {}  # worker index -> (sequence, attempt, until): waits for that worker to answer
        self.results: dict[str, SequenceResult] = {}
        self.workers: list = []
        self.idle: deque = deque()
        self.running: dict = {}  # ref -> (worker index, sequence, attempt)
        self.restarting: dict = {}  # ref of a ready() call -> worker index
        self.board = None
        self.backend_note: str | None = None  # how auto chose the backend (start())
        known = [n for n in lengths.values() if n is not None]
        self.progress = Progress(frames_total=sum(known) if len(known) == len(jobs) else None, sequences=len(jobs))

    def start(self) -> None:
        ray = self.ray
        count = self._worker_count()  # (first: a cluster too small for a worker would never run the choice)
        self.progress.workers = count
        self.observer.progress(self.progress)
        backend, self.backend_note = _settled_backend(ray, self.model, self.cluster)
        self.model = replace(self.model, backend=backend)
        board = f"coordgan-board-{os.getpid()}-{time.time_ns()}"
        self.board = ray.remote(_Board).options(num_cpus=0, name=board).remote()
        # Restarts are bounded by the attempts the run can ever make, so a worker that keeps dying
        # while it starts cannot keep the run waiting for ever.
        actor = ray.remote(_Worker).options(
            num_cpus=self.cluster.cpus_per_worker, num_gpus=self.cluster.gpus_per_worker,
            max_restarts=len(self.jobs) * (self.cluster.max_retries + 1), max_task_retries=0,
            runtime_env={"env_vars": _worker_env(self.cluster)})
        warm = (self.options.lookup, self.options.params.mode)
        self.workers = [actor.remote(i, self.model, board, warm) for i in range(count)]
        # through restarts (a worker killed while it starts comes back); an error of its own ends the run
        waiting = {w.ready.options(max_task_retries=-1).remote(): i for i, w in enumerate(self.workers)}
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=_POLL_S)
            for ref in done:
                index = waiting.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # the model does not open on that node: nothing would run
                    raise CoordGANError(f"Worker {index} could not open the model {self.model.artifact}: "
                                        f"{_reason(exc)}.") from None
                self.idle.append(index)
                self.progress.workers_alive += 1
            self.observer.progress(self.progress)
        self.progress.started = True

    def _worker_count(self) -> int:
        c, resources = self.cluster, self.ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        fit = int(cpus // c.cpus_per_worker)
        if c.gpus_per_worker:
            fit = min(fit, int(gpus // c.gpus_per_worker))
        if c.workers is None:
            if fit < 1:
                raise CoordGANError(f"The cluster at {c.address} has {cpus:g} CPUs and {gpus:g} GPUs: not enough for "
                                    f"one worker of {c.cpus_per_worker:g} CPUs and {c.gpus_per_worker:g} GPUs.")
            return min(fit, len(self.jobs))
        if c.workers > fit:
            raise CoordGANError(f"--workers {c.workers} with {c.cpus_per_worker:g} CPUs and {c.gpus_per_worker:g} GPUs "
                                f"each needs more than the cluster at {c.address} has ({cpus:g} CPUs, {gpus:g} GPUs).")
        return min(c.workers, len(self.jobs))

    def run(self) -> None:
        ray = self.ray
        while self.pending or self.running or self.delayed or self.parked:
            self._release()
            while self.idle and self.pending:
                self._submit(self.idle.popleft(), *self.pending.popleft())
            if not self.running and not self.restarting and not self.idle:  # every worker is gone for good
                for name, attempt in [*self.pending, *((n, a) for _, n, a in self.delayed)]:
                    self._finish(SequenceResult(name, "failed", attempt - 1, reason="no worker was left to run it"))
                self.pending.clear()
                self.delayed.clear()
                break
            waiting = [*self.running, *self.restarting]
            if not waiting:  # idle workers, and retries that wait for their time
                time.sleep(_POLL_S)
                continue
            done, _ = ray.wait(waiting, num_returns=1, timeout=_POLL_S)
            for ref in done:
                if ref in self.restarting:
                    self._rejoined(ref)
                else:
                    self._ended(ref)
            self._show()

    def _submit(self, index: int, name: str, attempt: int) -> None:
        options = self.options if attempt == 1 else replace(self.options, resume=True, overwrite=False)
        self.running[self.workers[index].run.remote(self.jobs[name], options)] = (index, name, attempt)

    def _release(self) -> None:
        """Retries whose time has come to pending: those refused by a lock after their delay, those
        parked on an unreachable worker once it answered (_rejoined) or once they waited wait_s."""
        now = time.monotonic()
        due = [d for d in self.delayed if d[0] <= now]
        self.delayed = [d for d in self.delayed if d[0] > now]
        self.pending.extendleft((name, attempt) for _, name, attempt in reversed(due))
        for index in [i for i, (_, _, until) in self.parked.items() if until <= now]:
            name, attempt, _ = self.parked.pop(index)  # another worker then; a lock still held is waited for
            self.pending.appendleft((name, attempt))

    def _ended(self, ref) -> None:
        ray = self.ray
        index, name, attempt = self.running.pop(ref)
        try:
            value = ray.get(ref)
        except ray.exceptions.ActorUnavailableError as exc:
            # Not (yet) a dead worker: the connection to it failed and the attempt may still be running there.
            # The sequence waits for the worker to answer a ready() call, which it runs after the attempt
            # (an actor runs its calls in order), then goes again resumed: a sequence that attempt completed is
            # then found complete, not refused by the lock it still held. A worker dead after all is restarted
            # by Ray and answers just the same.
            self.progress.workers_alive -= 1
            self.restarting[self.workers[index].ready.options(max_task_retries=-1).remote()] = index
            self._again(name, attempt, f"its worker was unreachable {attempt} times (last: {_reason(exc)})",
                        parked_on=index)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
            # The worker process died: Ray restarts it; the sequence goes again, from its state.
            self.progress.workers_alive -= 1
            self.restarting[self.workers[index].ready.options(max_task_retries=-1).remote()] = index
            self._again(name, attempt, f"its worker died {attempt} times (last: {_reason(exc)})")
            return
        except Exception as exc:  # the sequence's own error (a bad mask): retrying gives the same
            self.idle.append(index)
            reason = _reason(exc)
            if attempt > 1 and isinstance(_cause(exc), FolderBusy):
                # A retry stopped at the folder's lock: an earlier attempt (a worker that lost touch with the
                # driver, a cut-off node) still writes it; this sequence goes again once that one lets go.
                first = self.busy_since.setdefault(name, time.monotonic())
                waited = time.monotonic() - first
                if waited < self.cluster.wait_s:
                    self.delayed.append((time.monotonic() + _BUSY_RETRY_S, name, attempt))
                    return
                reason = f"{reason} (a retry waited {waited:.0f} s for an earlier attempt to let go of it)"
            self._finish(SequenceResult(name, "failed", attempt, worker=index, reason=reason))
            return
        self.idle.append(index)
        s = value["summary"]
        # complete before this run: skipped; found complete by a retry: done, by an earlier attempt of this run
        skipped = bool(s.get("skipped")) and attempt == 1
        self._finish(SequenceResult(
            name, "skipped" if skipped else "done", attempt, value["worker"], value["node"], value["pid"],
            s.get("frames"), 0 if skipped else s.get("frames_processed", 0), s.get("resumed_from"),
            value["seconds"], warnings=list(s.get("warnings", [])), summary_digest=summary_digest(s)))

    def _again(self, name: str, attempt: int, why: str, parked_on: int | None = None) -> None:
        """The sequence's attempt was lost with its worker: another one (resumed), within max_retries;
        `parked_on`: not before that worker answers (or wait_s has passed)."""
        self.busy_since.pop(name, None)  # an attempt ran: the next one's wait for a held lock starts afresh
        if attempt > self.cluster.max_retries:
            self._finish(SequenceResult(name, "failed", attempt, reason=why))
            return
        self.progress.retries += 1
        if parked_on is None:
            self.pending.appendleft((name, attempt + 1))
        else:
            self.parked[parked_on] = (name, attempt + 1, time.monotonic() + self.cluster.wait_s)

    def _rejoined(self, ref) -> None:
        index = self.restarting.pop(ref)
        parked = self.parked.pop(index, None)
        if parked is not None:  # the worker answered: the attempt it ran has ended, the sequence goes again
            self.pending.appendleft(parked[:2])
        try:
            self.ray.get(ref)
        except Exception:  # out of restarts, or its model no longer opens: the others go on
            return
        self.idle.append(index)
        self.progress.workers_alive += 1

    def _finish(self, result: SequenceResult) -> None:
        self.results[result.sequence] = result
        self.progress.sequences_done += 1
        self.progress.running.pop(result.sequence, None)
        self.observer.finished(result)

    def _show(self) -> None:
        try:
            board = self.ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:  # progress only: a lost board never stops the run
            board = {}
        p = self.progress
        p.running = {name: entry for name, entry in board.items() if name not in self.results}
        p.frames_done = sum(r.frames or 0 for r in self.results.values() if r.status != "failed") + sum(
            entry["done"] for entry in p.running.values())
        self.observer.progress(p)

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self.ray.kill(worker, no_restart=True)
        if self.board is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(self.board)


def _cause(exc: BaseException) -> BaseException:
    """The error a worker raised, out of Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _reason(exc: BaseException) -> str:
    """One clause: the error a worker raised (not Ray's wrapper and its traceback)."""
    return first_line(_cause(exc))


# --- connecting ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _connected(cluster: ClusterOptions):
    """Ray, initialised for this run (an embedded instance started, or a cluster joined), shut down after."""
    import logging

    address = cluster.address
    loopback = cluster.local or _is_loopback(address)
    # Read by Ray when it is imported and by the processes it starts: no usage reports; on loopback,
    # Ray's single-machine mode, in which it advertises and listens on 127.0.0.1 only (on Linux it
    # otherwise takes the machine's routable address, even for a local instance).
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if cluster.local:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's default for a new local instance, said: no warning
        # Ray runs workers at nice 15 (to keep its daemons responsive on busy nodes); the embedded
        # instance stands in for the in-process run, so its workers get the priority that run has.
        os.environ.setdefault("RAY_worker_niceness", "0")
    elif loopback and "RAY_AUTH_MODE" not in os.environ and _token_available():
        # A head on this machine started by `ray start` uses the local token, as Ray's `auto` would
        # find it; Ray sends the token to an explicit address only when told, so that a token never
        # goes to another machine unasked: here it stays on this one.
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError:
        raise CoordGANError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}.") from None
    if ray.is_initialized():
        raise CoordGANError("Ray is already initialised in this process; a cluster run starts its own connection.")
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "namespace": "coordgan"}
    # ray.init makes SIGTERM exit on the spot; the caller's handler (the CLI's unwinds like Ctrl-C,
    # so the workers are stopped) is put back once Ray is up.
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if cluster.local:
            try:
                ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                         object_store_memory=cluster.object_store_mb << 20, **quiet)
            except (OSError, RuntimeError, ValueError) as exc:
                with contextlib.suppress(Exception):
                    ray.shutdown()  # whatever it had started
                where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
                raise CoordGANError(f"Cannot start a local Ray instance: {where}{first_line(exc)}.") from None
        else:
            _check_reachable(address)
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                    " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token)")
                raise CoordGANError(f"Cannot join the Ray cluster at {address}: {first_line(exc)}{hint}.") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray
    finally:
        ray.shutdown()  # a local instance stops with it; a joined cluster keeps running


def _host_port(address: str) -> tuple[str, int] | None:
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None  # auto without RAY_ADDRESS (Ray finds this machine's cluster), or a ray:// address
    return host.strip("[]"), int(port)


def _is_loopback(address: str) -> bool:
    where = _host_port(address)
    return where is not None and (where[0] == "localhost" or where[0].startswith("127.") or where[0] == "::1")


def _token_available() -> bool:
    """Ray's token sources, in its order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def _check_reachable(address: str) -> None:
    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise CoordGANError(f"Cannot reach a Ray cluster at {where[0]}:{where[1]} ({first_line(exc)}); start one with "
                            "`ray start --head` or use --cluster local.") from None


# --- the jobs -----------------------------------------------------------------------------------

def _absolute(job):
    """The job with every path absolute: workers may run in another folder, on another machine."""
    return replace(job, frames=Path(job.frames).absolute(), out_dir=Path(job.out_dir).absolute(),
                   refs=tuple((frame, Path(path).absolute()) for frame, path in job.refs),
                   overlay=Path(job.overlay).absolute() if job.overlay else None)


def _absolute_artifact(artifact: str) -> str:
    return artifact if "://" in artifact else str(Path(artifact).absolute())


def _length(job) -> int | None:
    """Frames in the sequence (read from the folder or the container), for longest-first; None when
    unknown or unreadable (its worker then reports why)."""
    try:
        return open_frames(job.frames).count
    except CoordGANError:
        return None

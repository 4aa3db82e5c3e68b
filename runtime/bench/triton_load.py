"""A perf_analyzer-style closed-loop load test of one model on a Triton server (`coordgan bench triton`).

For each (batch, concurrency C) level, C threads - each with its own tritonclient client, as
separate processes would have - send requests back to back: warm-up first, then, all starting
together, a fixed number of requests (shared across the threads) and/or a fixed duration. Inputs
are random arrays shaped from the model's config, built once per thread (perf_analyzer also reuses
its data: we time the server, not numpy). Client side: latency per request and the level's
throughput (inferences = requests x batch, per second of wall time). Server side: the delta of
Triton's statistics over the level - queue and compute times per request, and the batch size the
scheduler actually executed (inference_count / execution_count), which shows dynamic batching at work.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.bench.report import fmt
from runtime.bench.stats import summarize
from runtime.bench.triton_target import TritonTarget, random_inputs
from runtime.errors import CoordGANError, first_line


@dataclass
class LoadOptions:
    concurrency: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (1,)
    requests: int | None = 100  # per level, shared by its clients; None: only duration_s bounds a level
    duration_s: float | None = None
    warmup: int = 2  # untimed requests per client before each level
    shapes: dict = field(default_factory=dict)  # input name -> dims (without batch) for -1 dims
    seed: int = 0
    timeout_s: float = 300.0  # per request: a queue at high concurrency on a slow CPU can be long

    def validate(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise CoordGANError("--concurrency must be positive integers separated by commas.")
        if self.requests is None and self.duration_s is None:
            raise CoordGANError("Give --requests N or --duration SECONDS (or both) to bound each level.")
        if self.requests is not None and self.requests < 1:
            raise CoordGANError("--requests must be at least 1.")
        if self.duration_s is not None and self.duration_s <= 0:
            raise CoordGANError("--duration must be greater than 0 seconds.")
        if self.warmup < 0:
            raise CoordGANError("--warmup must be at least 0.")


@dataclass
class _Level:
    """What the client threads of one level share: a ticket counter, the start signal, the results."""
    requests: int | None
    deadline_s: float | None
    barrier: threading.Barrier
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    start: float = 0.0
    latencies_ms: list = field(default_factory=list)
    last_end: float = 0.0
    errors: list = field(default_factory=list)
    setup_error: str | None = None

    def take_ticket(self) -> bool:
        with self.lock:
            if self.requests is not None and self.issued >= self.requests:
                return False
            if self.deadline_s is not None and time.perf_counter() - self.start >= self.deadline_s:
                return False
            self.issued += 1
            return True


def _request(target: TritonTarget, client, batch: int, options: LoadOptions, seed: int):
    """A callable sending one request of random inputs, serialised once and reused by every call."""
    module = target.module
    inputs = []
    for name, (datatype, value) in random_inputs(target, batch, options.shapes,
                                                 np.random.default_rng(seed)).items():
        item = module.InferInput(name, list(value.shape), datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    # HTTP returns JSON outputs unless binary ones are asked for; gRPC returns all outputs raw by default
    outputs = [module.InferRequestedOutput(n, binary_data=True) for n in target.outputs] \
        if target.protocol == "http" else None
    extra = {"client_timeout": options.timeout_s} if target.protocol == "grpc" else {}

    def infer():
        client.infer(target.model, inputs, model_version=target.version, outputs=outputs, **extra)

    return infer


def _closed_loop(level: _Level, infer) -> None:
    """Wait for the common start, then one request after another while tickets last."""
    try:
        level.barrier.wait()  # all clients warm: the main thread snapshots the statistics
        level.barrier.wait()  # ... and sets level.start
    except threading.BrokenBarrierError:
        return
    latencies, errors, end = [], [], 0.0
    while level.take_ticket():
        t0 = time.perf_counter()
        try:
            infer()
        except Exception as exc:
            errors.append(first_line(exc))
        else:
            latencies.append((time.perf_counter() - t0) * 1e3)
        end = time.perf_counter()
    with level.lock:
        level.latencies_ms += latencies
        level.errors += errors
        level.last_end = max(level.last_end, end)


def _client_thread(target: TritonTarget, level: _Level, batch: int, options: LoadOptions, seed: int) -> None:
    client = None
    try:
        client = target.new_client(options.timeout_s)
        infer = _request(target, client, batch, options, seed)
        for _ in range(options.warmup):
            infer()
    except Exception as exc:  # the level cannot run as asked: stop every client, report the first reason
        level.setup_error = level.setup_error or first_line(exc)
        level.barrier.abort()
    else:
        _closed_loop(level, infer)
    finally:
        if client is not None:  # an open HTTP connection would hold the server's shutdown
            try:
                client.close()
            except Exception:
                pass


def _delta(before: dict, after: dict) -> dict:
    return {k: ([a - b for a, b in zip(after[k], before[k])] if isinstance(after[k], list) else after[k] - before[k])
            for k in after}


def run_level(target: TritonTarget, batch: int, concurrency: int, options: LoadOptions) -> dict:
    """One level: warm-up, `concurrency` closed-loop clients, client latencies + the statistics' delta."""
    level = _Level(options.requests, options.duration_s, threading.Barrier(concurrency + 1))
    threads = [threading.Thread(target=_client_thread, name=f"triton-load-{i}", daemon=True,
                                args=(target, level, batch, options, options.seed * 1000 + i))
               for i in range(concurrency)]
    initial = target.statistics()
    for t in threads:
        t.start()
    try:
        level.barrier.wait()
        before = _settled_statistics(target, initial, concurrency * options.warmup)  # warm-ups counted
        level.start = time.perf_counter()
        level.barrier.wait()
    except threading.BrokenBarrierError:
        pass  # a client failed its warm-up: reported below
    except BaseException:
        level.barrier.abort()  # e.g. the statistics call failed: release the waiting clients
        raise
    finally:
        for t in threads:
            t.join()
    if level.setup_error is not None:
        raise CoordGANError(f"Warm-up requests to {target.model} failed: {level.setup_error}.")
    sent = len(level.latencies_ms) + len(level.errors)
    after = _settled_statistics(target, before, sent)
    wall_s = max(level.last_end - level.start, 0.0)
    row = {"target": target.model, "backend": f"triton-{target.protocol}", "batch": batch,
           "concurrency": concurrency, "device": f"triton {target.host}", "detail": target.describe_batching(),
           "requests": sent, "errors": len(level.errors), "wall_s": wall_s}
    if level.latencies_ms:
        row.update(status="ok", **summarize(level.latencies_ms, batch))
        row["throughput"] = len(level.latencies_ms) * batch / wall_s if wall_s > 0 else None
    else:
        row["status"] = "failed"
    if level.errors:
        row["reason"] = f"{len(level.errors)} of {sent} requests failed, first: {level.errors[0]}"
    row.update(server_stats(_delta(before, after)))
    return row


def _settled_statistics(target: TritonTarget, before: dict, sent: int, wait_s: float = 5.0) -> dict:
    """The statistics once the server has counted the `sent` requests since `before` (it counts just
    after responding, so a snapshot taken right after the last response can miss it)."""
    deadline = time.perf_counter() + wait_s
    while True:
        after = target.statistics()
        delta = _delta(before, after)
        if delta["success"][0] + delta["fail"][0] >= sent or time.perf_counter() > deadline:
            return after
        time.sleep(0.05)


def server_stats(delta: dict) -> dict:
    """Server-side numbers of one level: per-request means in ms, and the executed batch size."""
    def mean_ms(key):
        count, ns = delta[key]
        return ns / count / 1e6 if count else None

    executions = delta["execution_count"]
    # success + fail: the python backend counts a response carrying an error as a success
    return {"server_requests": delta["success"][0] + delta["fail"][0], "server_failed": delta["fail"][0],
            "server_inferences": delta["inference_count"], "server_executions": executions,
            "server_avg_batch": delta["inference_count"] / executions if executions else None,
            "server_request_ms": mean_ms("success"), "server_queue_ms": mean_ms("queue"),
            "server_compute_input_ms": mean_ms("compute_input"), "server_compute_infer_ms": mean_ms("compute_infer"),
            "server_compute_output_ms": mean_ms("compute_output")}


def run_load(target: TritonTarget, options: LoadOptions, *, progress=None, on_row=None) -> tuple[dict, list]:
    """Every (batch, concurrency) level in turn; returns (meta, rows) in `coordgan bench`'s result format."""
    options.validate()
    say = progress or (lambda message: None)
    for batch in options.batches:  # refuse bad shapes / batches before any thread starts
        random_inputs(target, batch, options.shapes, np.random.default_rng(0))
    rows = []
    for batch in options.batches:
        for concurrency in options.concurrency:
            say(f"{target.model}: batch {batch}, concurrency {concurrency}")
            row = run_level(target, batch, concurrency, options)
            rows.append(row)
            if on_row:
                on_row(row)
    bound = " or ".join(x for x in (f"{options.requests} requests" if options.requests else "",
                                    f"{options.duration_s:g} s" if options.duration_s else "") if x)
    meta = {"target": "triton", "workload": f"{target.model} closed loop, {bound} per level after "
                                            f"{options.warmup} warm-up requests per client",
            "source": f"triton {target.protocol}://{target.host}/{target.model}", "model": target.model,
            "protocol": target.protocol, "url": target.host, "server_version": target.server_version,
            "batching": target.describe_batching(), "model_config": target.config,
            "options": {"concurrency": list(options.concurrency), "batches": list(options.batches),
                        "requests": options.requests, "duration_s": options.duration_s, "warmup": options.warmup,
                        "shapes": {k: list(v) for k, v in options.shapes.items()}, "seed": options.seed},
            "machine": client_machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return meta, rows


def client_machine() -> dict:
    """The load generator's host (the server may be elsewhere); no torch import on this path."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "numpy": np.__version__}
    try:
        from importlib.metadata import version

        info["tritonclient"] = version("tritonclient")
    except Exception:
        info["tritonclient"] = None
    if hasattr(os, "getloadavg"):
        info["load_average"] = os.getloadavg()[0]
    return info


def render_table(rows, title: str, caption: str = "", console=None) -> None:
    """One row per level: client latency and throughput beside the server's queue / compute split."""
    from rich.table import Table
    from rich.text import Text

    from runtime import terminal

    console = console or terminal.console()
    table = Table(title=title, caption=caption or None)
    heads = ("batch", "conc.", "requests", "errors", "infer/s", "p50 ms", "p90 ms", "p99 ms", "mean ms",
             "queue ms", "input ms", "infer ms", "output ms", "exec batch")
    for name in heads:
        table.add_column(name, justify="right")
    for r in rows:
        if r["status"] != "ok":
            continue
        table.add_row(str(r["batch"]), str(r["concurrency"]), str(r["requests"]),
                      Text(str(r["errors"]), style="red") if r["errors"] else "0", fmt(r["throughput"], 2),
                      *(fmt(r[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "server_queue_ms",
                                             "server_compute_input_ms", "server_compute_infer_ms",
                                             "server_compute_output_ms", "server_avg_batch")))
    if any(r["status"] == "ok" for r in rows):
        console.print(table)
        console.print("client: latency per request, inferences/s = ok requests x batch / wall time; server "
                      "(Triton statistics over the level): mean queue / compute times per request, executed "
                      "batch = inferences / executions.")
    for r in rows:
        if r.get("reason"):
            console.print(terminal.tagged(r["status"], f" batch {r['batch']}, concurrency {r['concurrency']}: "
                                                       f"{r['reason']}"))

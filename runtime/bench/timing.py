"""The timing loop shared by every backend: warm-up, timed calls, host and GPU memory sampling.

A runner is anything with the `Runner` interface: `prepare(batch)` builds the inputs of one batch
(outside the timed region), `__call__()` runs it once and returns only when the results are ready
(host arrays, or a synchronised device), `timer()` optionally gives device-side timing (CUDA
events for torch) and `gpu_peak()` the runner's own peak GPU memory. Host memory is the process
RSS sampled by a thread during the timed loop (delta over the RSS just before it); GPU memory,
for runners without their own counter, is the device's used memory (cuMemGetInfo) sampled the
same way, delta over its value before the loop.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from runtime.bench.stats import summarize

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gpu_used_bytes():
    """Used memory of the current CUDA device (total - free, cuMemGetInfo), or None without a GPU."""
    try:
        from runtime import cuda_driver

        if not cuda_driver.available():
            return None
        driver, _ = cuda_driver.context()
        free, total = cuda_driver.check(driver.cuMemGetInfo(), "cuMemGetInfo")
        return int(total) - int(free)
    except Exception:
        return None


class MemorySampler:
    """Samples RSS (and optionally GPU used memory) every `interval_s` in a daemon thread."""

    def __init__(self, interval_s: float = 0.005, gpu: bool = False):
        self.interval_s = interval_s
        self.gpu = gpu
        self._stop = threading.Event()
        self._thread = None
        self.rss_base = self.rss_peak = 0
        self.gpu_base = self.gpu_peak = None

    def _sample(self):
        rss = rss_bytes()
        self.rss_peak = max(self.rss_peak, rss)
        if self.gpu:
            used = gpu_used_bytes()
            if used is not None:
                self.gpu_peak = used if self.gpu_peak is None else max(self.gpu_peak, used)

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self):
        self.rss_base = self.rss_peak = rss_bytes()
        if self.gpu:
            self.gpu_base = self.gpu_peak = gpu_used_bytes()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._sample()
        self._stop.set()
        self._thread.join()

    @property
    def rss_delta(self) -> int:
        return max(0, self.rss_peak - self.rss_base)

    @property
    def gpu_delta(self):
        if self.gpu_base is None or self.gpu_peak is None:
            return None
        return max(0, self.gpu_peak - self.gpu_base)


class Runner:
    """One backend running one target. Subclasses implement prepare() and __call__()."""

    backend: str = "?"
    device: str = "cpu"
    detail: str = ""  # what exactly runs (e.g. "numpy sparse lookup"), shown in reports
    uses_gpu: bool = False

    def prepare(self, batch: int) -> None:
        raise NotImplementedError

    def __call__(self) -> None:
        raise NotImplementedError

    def timer(self):
        """A context manager factory measuring one call in ms on the device, or None for wall clock."""
        return None

    def reset_gpu_peak(self) -> None:
        """Runners with their own GPU memory counter (torch) reset it here."""

    def gpu_peak(self):
        """Peak GPU bytes from the runner's own counter since reset_gpu_peak(), or None."""
        return None

    def close(self) -> None:
        pass


@dataclass
class Measurement:
    latencies_ms: list = field(default_factory=list)
    host_peak_bytes: int = 0
    gpu_peak_bytes: int | None = None
    timing: str = "wall clock"

    def summary(self, batch: int) -> dict:
        out = summarize(self.latencies_ms, batch)
        out["host_peak_mb"] = self.host_peak_bytes / 2**20
        out["gpu_peak_mb"] = None if self.gpu_peak_bytes is None else self.gpu_peak_bytes / 2**20
        out["timing"] = self.timing
        return out


def measure(runner: Runner, batch: int, *, warmup: int = 3, iters: int = 20, max_time_s: float | None = None,
            on_iter=None) -> Measurement:
    """Warm up, then time `iters` calls (fewer when `max_time_s` runs out, but always at least one)."""
    runner.prepare(batch)
    for _ in range(warmup):
        runner()
        if on_iter:
            on_iter("warmup")
    runner.reset_gpu_peak()
    m = Measurement()
    own_gpu_counter = runner.gpu_peak() is not None
    sampler = MemorySampler(gpu=runner.uses_gpu and not own_gpu_counter)
    timer_factory = runner.timer()
    if timer_factory is not None:
        m.timing = "CUDA events"
    elif runner.uses_gpu:
        m.timing = "wall clock, synchronised"
    start = time.perf_counter()
    with sampler:
        for i in range(iters):
            if timer_factory is not None:
                with timer_factory() as t:
                    runner()
                m.latencies_ms.append(t.ms)
            else:
                t0 = time.perf_counter()
                runner()
                m.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            if on_iter:
                on_iter("timed")
            if max_time_s is not None and time.perf_counter() - start > max_time_s:
                break
    m.host_peak_bytes = sampler.rss_delta
    m.gpu_peak_bytes = runner.gpu_peak() if own_gpu_counter else sampler.gpu_delta
    return m

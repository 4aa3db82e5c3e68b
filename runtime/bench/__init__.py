"""Benchmarking without torch: timing loop, statistics, memory sampling, runtime-backend runners, reports.

The torch, torch.compile and published-path runners and the driver `run_bench` live in
`coordgan.bench`, the command in `coordgan/cli/bench.py`; this package is what a deployment box
needs to time ONNX Runtime / TensorRT / Triton alone.
"""

from runtime.bench.stats import percentile, summarize
from runtime.bench.timing import Measurement, MemorySampler, Runner, measure

__all__ = ["percentile", "summarize", "Measurement", "MemorySampler", "Runner", "measure"]

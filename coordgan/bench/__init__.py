"""`coordgan bench`: the torch-side runners (torch eager, torch.compile, the published evaluation
path), the model source (checkpoint or random-weight preset, ONNX exported on the fly into a cache)
and the driver that runs every backend over a batch sweep. The timing loop, statistics and reports
are torch-free, in `runtime.bench`.
"""

from coordgan.bench.run import ALL_BACKENDS, BenchOptions, run_bench

__all__ = ["ALL_BACKENDS", "BenchOptions", "run_bench"]

"""`coordgan bench`: the torch-side runners (torch eager, torch.compile, the published evaluation
path) and the driver that runs every backend over a batch sweep. The timing loop, statistics,
reports and the runtime backends' runners are torch-free, in `runtime.bench`; the weights come
from `export.cache.ModelSource` (a checkpoint, or a preset with random weights).
"""

from coordgan.bench.run import ALL_BACKENDS, BenchOptions, run_bench

__all__ = ["ALL_BACKENDS", "BenchOptions", "run_bench"]

"""The compiled (numba) kernels of the sparse CPU lookup, imported by runtime.lookup.sparse on first use.

    jit.py      njit with an on-disk cache that works on read-only installs
    simd.py     8- and 16-lane float32 vectors and vectorisable exps
    grid.py     the reference pixels bucketed into cells; a query's disk and its tail bound
    soft.py     soft mode
    nearest.py  hard and top-k modes
    dense.py    soft mode over every reference pixel (where the cut cannot pay)

Everything works on ONE batch item; kernels release the GIL and take a query range, so the
caller's threads split the queries.
"""

from runtime.lookup.kernels.dense import TILE, nearest_rows, soft_dense, weight_rows
from runtime.lookup.kernels.grid import FAR, PAD, gather_channels, sort_grid
from runtime.lookup.kernels.nearest import nearest_k
from runtime.lookup.kernels.soft import soft

__all__ = ["FAR", "PAD", "TILE", "gather_channels", "nearest_k", "nearest_rows", "soft", "soft_dense", "sort_grid",
           "weight_rows"]

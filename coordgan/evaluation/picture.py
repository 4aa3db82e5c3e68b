"""The benchmark's picture: queries, ground truth, and each reference's labels propagated."""

from __future__ import annotations

import numpy as np

from coordgan.evaluation.data import LabelledImages
from coordgan.evaluation.scoring import PropagationResult


def visualize(result: PropagationResult, refs: LabelledImages, queries: LabelledImages, cell: int = 96) -> np.ndarray:
    """Grid: row 0 query images, row 1 their ground truth; then one row per reference: its image,
    its labels, and its labels propagated to each query (palette colours)."""
    from coordgan.data import colorize
    from coordgan.visualize import tile

    k = len(result.examples["pred"][0]) if result.examples.get("pred") else 0
    blank = [None, None]
    cells = [blank + [queries.images[j] for j in range(k)],
             blank + [colorize(queries.labels[j]) for j in range(k)]]
    for r, preds in enumerate(result.examples["pred"]):
        cells.append([refs.images[r], colorize(refs.labels[r])] + [colorize(p) for p in preds])
    return tile(cells, cell)

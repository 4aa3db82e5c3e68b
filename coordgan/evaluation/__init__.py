"""Label-propagation evaluation: the paper's correspondence benchmark (Mu et al. 2022, Sec. 4.2).

Protocol (NVlabs/CoordGAN ``eval_corr.py`` + ``seg_utils.py``, followed here):

* R reference images (5 in the paper) with part labels; every other image is a query.
* Each reference's labels (one-hot, all classes, background included) are propagated to every
  query through correspondence maps with the soft lookup: L2 distance, softmax(-d / tau),
  tau = 0.01, over all reference pixels (:func:`coordgan.correspondence.lookup`); the query's
  label is the argmax.
* Per reference, intersections and unions are accumulated per class over the whole query set,
  IoU_c = sum inter_c / sum union_c, and the mIoU is the mean over the scored classes.
* The reported score is the mean of the R per-reference mIoUs.
* Background: the public ``inter_and_union`` zeroes predictions where the ground truth is 0 and
  histograms classes 1..C-1 only, so ground-truth background pixels are *ignored* (a prediction
  there counts for no class) and class 0 is left out of the mean. Here ``ignore_index=0`` does
  the former and ``exclude=(0,)`` the latter; both are the defaults.
* Differences, on purpose: a class whose union is empty over the whole query set (never in the
  ground truth, never predicted) has no IoU (None / NaN) and is left out of the mean, where the
  public code's ``+1e-10`` would count it as 0; images are resized with the training transform
  (:class:`coordgan.train.data.ImageFolder`: ``ImageOps.fit``, LANCZOS) and labels with nearest.

Beside it the identity baseline: each query pixel takes the reference label at the same pixel,
scored the same way. A model whose correspondence does anything useful beats it.

The correspondence step is a plain function ``corr_fn(images (N, 3, H, W) in [-1, 1]) ->
maps (N, 2, H, W)`` so tests and other models plug in; :func:`checkpoint_corr_fn` is the
CoordGAN adapter (encoder -> w_struct -> generator.warp).

    data.py      the labelled images (a folder, or synthetic faces with their true maps)
    maps.py      correspondence maps of a model, the identity grid, the match error
    scoring.py   propagation and per-class IoU beside the identity baseline
    picture.py   the PNG of it
    run.py       `coordgan eval-propagation` as a function: checkpoint (or a preset) + options -> report
"""

from coordgan.evaluation.data import SYNTHETIC, LabelledImages, load_folder, split_refs, synthetic_faces
from coordgan.evaluation.maps import (
    checkpoint_corr_fn,
    correspondence_maps,
    identity_corr,
    match_error,
    networks_corr_fn,
    to_tensor,
)
from coordgan.evaluation.picture import visualize
from coordgan.evaluation.scoring import (
    IoUAccumulator,
    PropagationResult,
    evaluate,
    evaluate_maps,
    ground_truth,
    propagate,
)

__all__ = [
    "SYNTHETIC",
    "LabelledImages",
    "PropagationResult",
    "IoUAccumulator",
    "identity_corr",
    "checkpoint_corr_fn",
    "networks_corr_fn",
    "propagate",
    "evaluate",
    "evaluate_maps",
    "correspondence_maps",
    "ground_truth",
    "match_error",
    "load_folder",
    "synthetic_faces",
    "split_refs",
    "to_tensor",
    "visualize",
]

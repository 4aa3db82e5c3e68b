"""`coordgan eval-propagation` as a function: a checkpoint and options in, the scores (and files) out.

The CLI maps its options one to one onto :class:`EvalOptions`, calls :func:`run_eval` and prints
the table; tests and scripts call it the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from coordgan.evaluation.scoring import LOOKUPS, check_lookup
from runtime.errors import CoordGANError
from runtime.lookup.spec import LookupParams


@dataclass(frozen=True)
class EvalOptions:
    data: str  # a folder with images/ and labels/, or "synthetic-faces"
    refs: tuple[str, ...] = ()  # reference image names (default: the first num_refs by sorted name)
    num_refs: int = 5
    tau: float = 0.01
    exclude: tuple[int, ...] = (0,)  # class ids left out of the mean IoU
    ignore: int = 0  # ground-truth class id not scored (-1: score every pixel)
    max_queries: int | None = None
    batch: int = 8
    n: int = 50  # synthetic faces
    seed: int = 0
    json_out: Path | None = None
    vis: Path | None = None
    device: str | None = None  # cpu | cuda[:N]; None: cuda when available
    preset: str | None = None  # random weights of this preset (seeded by `seed`) instead of a checkpoint
    lookup: str = "auto"  # a path of coordgan.correspondence.lookup; auto here: the exact reference on a GPU,
    #                        the sparse numpy path on the CPU (the benchmark's numbers, not the fastest path)

    def validate(self) -> None:
        LookupParams(tau=self.tau)  # the one check of the lookup's parameters (runtime.lookup.spec)
        if self.lookup not in LOOKUPS:
            raise CoordGANError(f"--lookup must be one of {', '.join(LOOKUPS)}, not {self.lookup!r}.")
        for out in (self.json_out, self.vis):
            if out is not None and not Path(out).parent.is_dir():
                raise CoordGANError(f"The folder of {out} does not exist.")


@dataclass
class EvalReport:
    result: object  # scoring.PropagationResult of the model's maps
    ceiling: object | None  # ... of the data's own maps (synthetic faces), else None
    errors: dict | None  # match error in px: {"model": ..., "identity": ...}, where the data has true maps
    record: dict  # what --json writes
    refs: int
    queries: int


def parse_ids(text: str, what: str) -> tuple[int, ...]:
    """'0,3' -> (0, 3); '' -> ()."""
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise CoordGANError(f"{what} must be comma-separated class ids, got {text!r}.") from None


def _model(ckpt, options: EvalOptions, device):
    """(config, corr_fn, what the record says of the weights) of CKPT, or of --preset's random weights."""
    from coordgan import evaluation as ev
    from coordgan.checkpoint import check_one_source, load, random_networks

    check_one_source(ckpt, options.preset)
    if options.preset is None:
        ck = load(ckpt)
        corr_fn = ev.checkpoint_corr_fn(ck, device)  # one sentence when the checkpoint has no encoder
        return ck.config, corr_fn, {"checkpoint": str(ck.path), "sha256": ck.sha256}
    cfg, nets = random_networks(options.preset, options.seed)
    return cfg, ev.networks_corr_fn(nets["e"], nets["g"], device), {"checkpoint": None,
                                                                     "weights": f"random (seed {options.seed})"}


def run_eval(ckpt, options: EvalOptions, progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Score the encoder maps of the checkpoint (None: options.preset's random weights) on the options'
    data; write --json / --vis if asked.

    progress(stage, done, total): stages "maps", "propagation", "ground-truth propagation".
    """
    import torch

    from coordgan import evaluation as ev
    from coordgan.devices import torch_device
    from runtime.fileio import atomic_write

    options.validate()
    ignore_index = None if options.ignore < 0 else options.ignore
    device = torch_device(options.device)
    lookup = options.lookup
    if lookup == "auto":
        lookup = "reference" if str(device).startswith("cuda") else "sparse"
    check_lookup(lookup, device)  # before the maps: a kernel this run cannot use is refused now
    report = progress or (lambda stage, done, total: None)

    config, corr_fn, weights = _model(ckpt, options, device)
    size = config.base_size
    synthetic = options.data == ev.SYNTHETIC
    if synthetic:
        if options.n < 2:
            raise CoordGANError(f"--n must be at least 2 (references and queries), got {options.n}.")
        dataset = ev.synthetic_faces(options.n, size, options.seed)
    else:
        dataset = ev.load_folder(options.data, size)
    ref_set, queries = ev.split_refs(dataset, list(options.refs) or None, options.num_refs, options.max_queries)

    kwargs = dict(tau=options.tau, exclude=options.exclude, ignore_index=ignore_index, batch=options.batch,
                  device=device, lookup=lookup)
    maps = ev.correspondence_maps(corr_fn, ref_set, queries, batch=options.batch, device=device, progress=report)
    result = ev.evaluate_maps(*maps, ref_set, queries, progress=report, **kwargs)
    # synthetic data: the renderer's own maps, the ceiling beside the identity baseline, and how far
    # the matches land from the true ones
    ceiling = ev.ground_truth(ref_set, queries, progress=lambda _, done, total: report(
        "ground-truth propagation", done, total), **kwargs)
    grid = ev.identity_corr(torch.zeros(1, 3, size, size))
    errors = ev.match_error({"model": maps, "identity": (grid.expand(len(ref_set), -1, -1, -1),
                                                         grid.expand(len(queries), -1, -1, -1))},
                            ref_set, queries, ignore_index=ignore_index)

    record = result.to_json()
    if ceiling is not None:
        gt = ceiling.to_json()
        record.update({"ground_truth_miou": gt["miou"], "ground_truth_class_iou": gt["class_iou"],
                       "match_error_px": errors["model"], "identity_match_error_px": errors["identity"]})
    record.update({**weights, "preset": config.name, "data": str(options.data), "size": size})
    if synthetic:
        record.update({"n": options.n, "seed": options.seed})
    if options.json_out is not None:
        with atomic_write(options.json_out, "w") as f:
            json.dump(record, f, indent=2)
    if options.vis is not None:
        from PIL import Image

        picture = ev.visualize(result, ref_set, queries)
        with atomic_write(options.vis) as f:
            Image.fromarray(picture).save(f, format="PNG")
    return EvalReport(result, ceiling, errors, record, len(ref_set), len(queries))


"""Training state without pickle: nested Python structures as safetensors + JSON.

Optimizer state dicts, RNG states and counters are trees of dicts/lists/tuples whose leaves are
tensors, numpy arrays or JSON scalars. `pack` pulls every array leaf out into a flat tensor dict
(for safetensors) and leaves a JSON skeleton with placeholders; `unpack` puts them back. Tuples
are tagged so that state dicts round-trip exactly (Adam's `betas`, Python's random state).
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import torch

from runtime.errors import CoordGANError
from runtime.fileio import atomic_write

FORMAT = "coordgan-train-state/1"
_TENSOR, _NDARRAY, _TUPLE, _INTKEYS = "__tensor__", "__ndarray__", "__tuple__", "__intkeys__"


def pack(tree) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, {name: tensor}) for a tree of dicts/lists/tuples/tensors/arrays/scalars."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, path):
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().to("cpu").contiguous()
            return {_TENSOR: path}
        if isinstance(node, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(node))
            return {_NDARRAY: path}
        if isinstance(node, dict):
            # Optimizer states are keyed by int parameter ids; JSON keys are strings, so say so.
            int_keys = bool(node) and all(isinstance(k, int) for k in node)
            items = {str(k): walk(v, f"{path}.{k}") for k, v in node.items()}
            return {_INTKEYS: items} if int_keys else items
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            return node.item()
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {path} in a training state")

    return walk(tree, "s"), tensors


def unpack(skeleton, tensors: dict[str, torch.Tensor]):
    def walk(node):
        if isinstance(node, dict):
            if _TENSOR in node:
                return tensors[node[_TENSOR]]
            if _NDARRAY in node:
                return tensors[node[_NDARRAY]].numpy()
            if _TUPLE in node:
                return tuple(walk(v) for v in node[_TUPLE])
            if _INTKEYS in node:
                return {int(k): walk(v) for k, v in node[_INTKEYS].items()}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(skeleton)


def save_tree(path, tree) -> Path:
    """Write a tree as one safetensors file (the skeleton in the header metadata), atomically."""
    from safetensors.torch import save as st_save

    skeleton, tensors = pack(tree)
    meta = {"format": FORMAT, "tree": json.dumps(skeleton)}
    path = Path(path)
    with atomic_write(path) as f:
        f.write(st_save(tensors, metadata=meta))
    return path


def load_tree(path):
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    try:
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        tensors = st_load(data)
    except FileNotFoundError:
        raise CoordGANError(f"Training state {path} is missing.") from None
    except (SafetensorError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise CoordGANError(f"Training state {path} is truncated or corrupt ({exc}).") from None
    if meta.get("format") != FORMAT:
        raise CoordGANError(f"{path} is not a CoordGAN training state.")
    return unpack(json.loads(meta["tree"]), tensors)


# --------------------------------------------------------------------------------------------------
# Every RNG a step draws from: torch CPU and CUDA (noise inputs, latents, crops), numpy, Python.


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))

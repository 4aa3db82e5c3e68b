"""Checkpoints: our safetensors format, and the authors' public `.pt` files.

Our format is one `.safetensors` file: tensors keyed `<net>.<param>` for the networks present
(g, g_ema, e, d, d_patch) and the model config as JSON in the header metadata, so nothing is
ever unpickled. Public checkpoints (top-level keys g_ema, g, e, d, d_patch, optimizer states)
are read with `torch.load(weights_only=True)` (`read_torch_file`, which also reads the LPIPS
backbone); their architecture is recognised by matching parameter names and shapes against the
presets. The file kind is told by its first bytes, not its extension, and a file that holds
pickled Python objects is told by the opcodes of its pickle and refused.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from coordgan.config import PRESETS, ModelConfig, get_preset
from coordgan.models import NETWORKS
from runtime.errors import CoordGANError, first_line
from runtime.fileio import atomic_write, sha256_file

FORMAT = "coordgan-deploy/1"
NETWORK_KEYS = ("g_ema", "g", "e", "d", "d_patch")  # g_ema is a Generator like g
_NET_CLASS = {"g_ema": NETWORKS["g"], **NETWORKS}


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    networks: dict[str, nn.Module]
    source: str  # "coordgan" (ours) or "public" (NVlabs/CoordGAN .pt)
    sha256: str
    metadata: dict = field(default_factory=dict)

    @property
    def generator(self) -> nn.Module:
        """The generator to use for inference: the EMA copy when present."""
        return self.require("g_ema" if "g_ema" in self.networks else "g")

    @property
    def encoder(self) -> nn.Module:
        return self.require("e")

    def require(self, key: str) -> nn.Module:
        if key not in self.networks:
            names = {"g": "generator", "g_ema": "EMA generator", "e": "encoder",
                     "d": "discriminator", "d_patch": "patch discriminator"}
            raise CoordGANError(f"Checkpoint {self.path} has no {names[key]} "
                                f"(it holds: {', '.join(self.networks) or 'nothing'}).")
        return self.networks[key]


ONE_SOURCE = "Give exactly one of a checkpoint and --preset NAME (random weights)."


def check_one_source(ckpt, preset: str | None) -> None:
    """A command's weights: a checkpoint or a preset's random weights, never both nor neither."""
    if (ckpt is None) == (preset is None):
        raise CoordGANError(ONE_SOURCE)


def random_networks(preset: str, seed: int = 0, which=("g", "e")) -> tuple[ModelConfig, dict[str, nn.Module]]:
    """A preset's networks with random weights, the one recipe (torch.manual_seed(seed), then build): a seed
    gives the same weights to bench and export onnx --preset (saved once in the cache) and eval-propagation."""
    from coordgan.models import build

    config = get_preset(preset)
    torch.manual_seed(seed)
    return config, build(config, which=which)


def save(path, config: ModelConfig, networks: dict[str, nn.Module], metadata: dict | None = None) -> Path:
    """Write networks + config as one safetensors file, atomically."""
    from safetensors.torch import save as st_save

    path = Path(path)
    tensors = {}
    for key, net in networks.items():
        if key not in NETWORK_KEYS:
            raise ValueError(f"unknown network key {key!r}; expected one of {NETWORK_KEYS}")
        for name, tensor in net.state_dict().items():
            tensors[f"{key}.{name}"] = tensor.detach().to("cpu").contiguous()
    meta = {"format": FORMAT, "config": config.to_json(), "networks": ",".join(networks),
            "extra": json.dumps(metadata or {})}
    with atomic_write(path) as f:  # its refusals (a WriteError) name the path already
        f.write(st_save(tensors, metadata=meta))
    return path


def load(path, preset: str | None = None, map_location="cpu") -> Checkpoint:
    """Load our safetensors checkpoint or a public `.pt` one; every user error is a CoordGANError."""
    path = Path(path)
    if not path.is_file():
        raise CoordGANError(f"Checkpoint {path} does not exist or is not a file.")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9 and head[8:9] == b"{":
        cfg, states, meta = _read_safetensors(path)
        if preset is not None and get_preset(preset).name != cfg.name:
            raise CoordGANError(f"Checkpoint {path} is preset {cfg.name!r}, not {preset!r}.")
        source = "coordgan"
    elif head[:2] == b"PK" or head[:1] == b"\x80":
        states = _read_public(path)
        cfg = _match_preset(path, states, preset)
        meta = {}
        source = "public"
    else:
        raise CoordGANError(f"{path} is neither a safetensors nor a PyTorch checkpoint.")
    networks = {}
    for key, state in states.items():
        net = _NET_CLASS[key](cfg)
        _load_state(net, state, f"{path} [{key}]")
        networks[key] = net.to(map_location).eval()
    return Checkpoint(path, cfg, networks, source, sha256_file(path), meta)


def _read_safetensors(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    data = path.read_bytes()
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_len])
        tensors = st_load(data)
    except (SafetensorError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise CoordGANError(f"Checkpoint {path} is truncated or corrupt ({first_line(exc)}).") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CoordGANError(f"{path} is a safetensors file but not a CoordGAN checkpoint (no embedded config).")
    cfg = ModelConfig.from_json(meta["config"])
    states: dict[str, dict] = {}
    for name, tensor in tensors.items():
        key, _, param = name.partition(".")
        if key not in NETWORK_KEYS:
            raise CoordGANError(f"Checkpoint {path} has a tensor {name!r} of no known network.")
        states.setdefault(key, {})[param] = tensor
    return cfg, states, json.loads(meta.get("extra", "{}"))


def read_torch_file(path: Path, what: str = "Checkpoint"):
    """`torch.load(weights_only=True)` of `path` (a zip or legacy PyTorch file), quietly; `what` names the
    file in errors. Why it failed is told by the file's bytes, never by torch's wording, and torch's
    advice to turn the safety off is never passed on."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":
        raise CoordGANError(f"{what} {path} is not a PyTorch weights file (neither a zip nor a pickle).")
    try:
        # a file object: torch.load must not pick a reader by the file's name; its pickle-protocol
        # warnings are about files it then refuses or reads anyway
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files (RuntimeError, EOFError, zip errors...)
        objects = pickled_objects(path)
        if objects:
            raise CoordGANError(f"Refusing to load {path}: it holds pickled Python objects (such as {objects[0]}), "
                                "not only tensors, and unpickling them could run arbitrary code, so they are never "
                                "loaded.") from None
        # torch's text for a refused pickle recommends weights_only=False: never repeat it
        reason = ("its pickle data is damaged or not written by torch.save"
                  if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc) else first_line(exc))
        raise CoordGANError(f"{what} {path} is truncated or corrupt ({reason}).") from None


# What torch.save pickles to rebuild tensors and plain containers: any other global is a Python object.
_TENSOR_GLOBALS = re.compile(r"collections\.OrderedDict|_codecs\.encode|torch\._utils\._rebuild_\w+"
                             r"|torch\.(storage\.)?\w*Storage|torch\.(Size|device)"
                             r"|builtins\.(set|frozenset|bytearray|complex)")
_PICKLE_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                   "SHORT_BINSTRING"}


def pickled_objects(path: Path) -> list[str]:
    """The Python objects (module.name, in order) that a PyTorch file's pickle names besides tensors,
    read from its opcodes alone: nothing is unpickled. Empty for a file of tensors and containers, and
    for bytes that hold no readable pickle."""
    found: list[str] = []
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"PK":  # torch.save's format: the object's pickle is <archive>/data.pkl
                with zipfile.ZipFile(f) as z:
                    names = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                    if names:
                        _pickle_globals(io.BytesIO(z.read(names[0])), found)
            else:  # the legacy format: five pickles (magic, protocol, system, the object, storage keys), then data
                f.seek(0)
                for _ in range(5):
                    _pickle_globals(f, found)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile):
        pass  # a pickle cut short or bytes that are none: what it named up to there still counts
    return [g for g in dict.fromkeys(found) if not _TENSOR_GLOBALS.fullmatch(g)
            and not (g.startswith("torch.") and isinstance(getattr(torch, g[6:], None), torch.dtype))]


def _pickle_globals(stream, found: list[str]) -> None:
    """Append the globals (module.name) one pickle in `stream` names; reads up to its STOP."""
    strings, memo, last = [], {}, None  # strings pushed, memoized ones: STACK_GLOBAL takes the last two
    for op, arg, _ in pickletools.genops(stream):
        if op.name in _PICKLE_STRINGS:
            strings.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = last
        elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
            strings.append(memo[arg])
        elif op.name == "GLOBAL":  # protocols 0-2 name builtins as Python 2 did
            module, name = arg.split(" ", 1)
            found.append(f"{'builtins' if module == '__builtin__' else module}.{name}")
        elif op.name == "STACK_GLOBAL":
            found.append(".".join(strings[-2:]))
        last = arg if op.name in _PICKLE_STRINGS else None


def _read_public(path: Path) -> dict[str, dict]:
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or not any(k in obj for k in NETWORK_KEYS):
        raise CoordGANError(f"{path} is not a CoordGAN checkpoint: expected top-level keys among {', '.join(NETWORK_KEYS)}.")
    states = {}
    for key in NETWORK_KEYS:
        if key in obj:
            state = obj[key]
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CoordGANError(f"{path}: entry {key!r} is not a state dict of tensors.")
            states[key] = {k.removeprefix("module."): v for k, v in state.items()}
    return states


def _match_preset(path: Path, states: dict, preset: str | None) -> ModelConfig:
    """The public files carry no config: find the preset whose generator/encoder shapes they match."""
    candidates = [get_preset(preset)] if preset else list(PRESETS.values())
    probe = "g_ema" if "g_ema" in states else next(iter(states))
    mismatches = {}
    for cfg in candidates:
        expected = {k: tuple(v.shape) for k, v in _NET_CLASS[probe](cfg).state_dict().items()}
        problems = _diff(expected, states[probe])
        if not problems:
            return cfg
        mismatches[cfg.name] = problems
    if preset:
        raise CoordGANError(f"Checkpoint {path} [{probe}] does not match preset {preset!r}: {mismatches[preset]}.")
    raise CoordGANError(f"Checkpoint {path} [{probe}] matches no preset ({'; '.join(f'{k}: {v}' for k, v in mismatches.items())}).")


def _diff(expected: dict[str, tuple], state: dict) -> str:
    """One sentence naming missing, unknown and mis-shaped keys (empty when they agree)."""
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    shaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    parts = []
    for label, keys, fmt in (("missing keys", missing, str), ("unknown keys", unknown, str),
                             ("mis-shaped keys", shaped,
                              lambda k: f"{k} {tuple(state[k].shape)} != {expected[k]}")):
        if keys:
            more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
            parts.append(f"{label} {', '.join(fmt(k) for k in keys[:4])}{more}")
    return "; ".join(parts)


def _load_state(net: nn.Module, state: dict, where: str) -> None:
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    problems = _diff(expected, state)
    if problems:
        raise CoordGANError(f"Checkpoint {where} does not fit the model: {problems}.")
    net.load_state_dict(state, strict=True)

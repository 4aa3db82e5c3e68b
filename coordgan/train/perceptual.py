"""LPIPS (the `lpips` package) built without touching the network.

`lpips.LPIPS(pnet_rand=True)` skips torchvision's download of the ImageNet backbone; the linear
calibration layers ship inside the lpips wheel (lpips/weights/v0.1/<net>.pth) and load from there.
The backbone weights then come from torchvision's own cache file (torch hub dir /checkpoints/,
the name torchvision would download) or an explicit path. A random backbone (tests, machines without
the weights) must be asked for by name: its "perceptual" distances are not LPIPS.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from coordgan.checkpoint import read_torch_file
from runtime.errors import CoordGANError

NETS = ("vgg", "alex")  # NVlabs/CoordGAN uses the VGG LPIPS
_RANDOM_BACKBONE_SEED = 0x1B1B5  # a random backbone is still the same one in every run and rank


def backbone_file_name(net: str) -> tuple[str, str]:
    """(file name, download URL) of torchvision's ImageNet weights for the LPIPS backbone."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    url = {"vgg": VGG16_Weights.IMAGENET1K_V1, "alex": AlexNet_Weights.IMAGENET1K_V1}[net].url
    return url.rsplit("/", 1)[-1], url


@dataclass(frozen=True)
class LpipsSource:
    net: str
    backbone: str  # "random" or the weights file
    description: str


def build_lpips(net: str = "vgg", weights: str | os.PathLike | None = None, random_backbone: bool = False,
                device="cpu") -> tuple[nn.Module, LpipsSource]:
    """A frozen LPIPS module (inputs in [-1, 1], output (N, 1, 1, 1)) and where its weights came from."""
    if net not in NETS:
        raise CoordGANError(f"Unknown LPIPS network {net!r}; choose one of: {', '.join(NETS)}.")
    if random_backbone and weights is not None:
        raise CoordGANError("Give either --lpips-weights or --lpips-random-backbone, not both.")
    path = None
    if not random_backbone:
        path = _resolve_backbone(net, weights)
    import lpips

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # torchvision's deprecation notice for `pretrained=`
        torch.manual_seed(_RANDOM_BACKBONE_SEED)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if path is None:
        source = LpipsSource(net, "random", f"LPIPS-{net} with a RANDOM backbone (--lpips-random-backbone): "
                                            "perceptual losses are not LPIPS")
    else:
        _load_backbone(model.net, path, net)
        source = LpipsSource(net, str(path), f"LPIPS-{net}, backbone weights from {path}")
    model.eval().requires_grad_(False)
    return model.to(device), source


def _resolve_backbone(net: str, weights) -> Path:
    name, url = backbone_file_name(net)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise CoordGANError(f"LPIPS backbone weights {path} do not exist or are not a file.")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / name
    if path.is_file():
        return path
    raise CoordGANError(
        f"LPIPS needs torchvision's ImageNet weights for its {net} backbone and nothing is downloaded at run time: "
        f"put {name} (from {url}) in {cache}, or pass --lpips-weights PATH "
        f"(or train with --lpips-random-backbone, whose perceptual losses are not LPIPS).")


def _load_backbone(trunk: nn.Module, path: Path, net: str) -> None:
    """Load torchvision `features.<i>.*` weights into lpips' sliced trunk (`slice<k>.<i>.*`)."""
    state = read_torch_file(path, "LPIPS backbone weights file")
    if not isinstance(state, dict):
        raise CoordGANError(f"LPIPS backbone weights {path} are not a state dict.")
    by_index = {}
    for key, tensor in trunk.state_dict().items():
        _, index, param = key.split(".")  # slice<k>.<i>.<weight|bias>
        by_index[f"features.{index}.{param}"] = (key, tensor.shape)
    mapped = {}
    for src, (dst, shape) in by_index.items():
        tensor = state.get(src)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(shape):
            raise CoordGANError(f"{path} is not torchvision's {net} ImageNet state dict "
                                f"(tensor {src} missing or of the wrong shape).")
        mapped[dst] = tensor
    trunk.load_state_dict(mapped, strict=True)

"""StyleGAN2 building blocks in plain PyTorch (no C++/CUDA extension to build).

Module and attribute names mirror NVlabs/CoordGAN's `model/blocks.py` so that the authors'
state dicts load key for key. The forward passes are written for export: the modulated
convolution scales inputs by the style instead of building per-sample weights, so there is no
batch-dependent grouped convolution and the batch axis stays dynamic in ONNX/TensorRT.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


def make_kernel(k) -> torch.Tensor:
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class _PaddedFir(torch.autograd.Function):
    """Pad by (p0, p1) on both axes, then one depthwise correlation with `weight` (C, 1, K, K).

    Its gradient is the same op (the flipped weight, pads K - 1 - p, F.pad cropping where that is
    negative), so every derivative order stays one depthwise convolution. Torch's own double
    backward of a grouped convolution runs one convolution per channel: an R1 pass through the
    celeba-128 discriminator took 14,597 ops (763 this way; tiny: 1,506 -> 540).
    """

    @staticmethod
    def forward(ctx, x, weight, pad):
        ctx.save_for_backward(weight)
        ctx.pad = pad
        p0, p1 = pad
        return F.conv2d(F.pad(x, [p0, p1, p0, p1]), weight.to(x.dtype), groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        k = weight.shape[-1]
        adjoint = (k - 1 - ctx.pad[0], k - 1 - ctx.pad[1])
        return _PaddedFir.apply(grad, torch.flip(weight, [2, 3]), adjoint), None, None


def _exporting() -> bool:
    """torch.export / the dynamo ONNX exporter is tracing (they see the plain convolution)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting and is_exporting())


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR filter, downsample: the StyleGAN2 resampling op.

    Same result as the public CUDA op (which convolves with the flipped kernel) for the
    non-negative pads used here, as one depthwise convolution.
    """
    pad0, pad1 = pad
    if pad0 < 0 or pad1 < 0:
        raise ValueError("upfirdn2d supports non-negative padding only")
    n, c, h, w = x.shape
    if (up == 1 and down == 1 and kernel.shape[0] == kernel.shape[1] and torch.is_grad_enabled()
            and x.requires_grad and not _exporting()):  # training: R1 differentiates twice
        weight = torch.flip(kernel, [0, 1])[None, None].expand(c, 1, *kernel.shape)
        return _PaddedFir.apply(x, weight, (pad0, pad1))
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


class Upsample(nn.Module):
    def __init__(self, kernel, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR blur with zero padding, or reflection padding (the encoder's anti-aliasing)."""

    def __init__(self, kernel, pad, upsample_factor: int = 1, reflection_pad: bool = False):
        super().__init__()
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * upsample_factor**2
        self.register_buffer("kernel", kernel)
        self.reflection = reflection_pad
        if reflection_pad:
            self.reflection_pad = nn.ReflectionPad2d((pad[0], pad[1], pad[0], pad[1]))
            pad = (0, 0)
        self.pad = tuple(pad)

    def forward(self, x):
        if self.reflection:
            x = self.reflection_pad(x)
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv with equalized learning rate: weights stored N(0,1), scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2, scale: float = SQRT2):
    """Bias + leaky ReLU (slope 0.2) + gain sqrt(2), broadcasting the bias over dim 1."""
    shape = (1, bias.shape[0]) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class ScaledLeakyReLU(nn.Module):
    def forward(self, x):
        return F.leaky_relu(x, 0.2) * SQRT2


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, bias=bias)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution in input-modulation form.

    conv(x * s, W) * d equals conv(x, W * s) demodulated, because the style s scales input
    channels and the demodulation d scales output channels; d = rsqrt(s^2 @ sum_k(W^2)^T + eps)
    is the same per-sample norm the public grouped form computes. The weight is shared across
    the batch, so this exports with a dynamic batch and runs as a plain convolution.
    """

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True,
                 upsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        # (1, out, in, k, k): the public layout, kept so checkpoints load unchanged.
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward(self, x, style):
        s = self.modulation(style)  # (N, in)
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        x = x * s[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt((s * s) @ weight.pow(2).sum([2, 3]).t() + 1e-8)  # (N, out)
            out = out * demod[:, :, None, None]
        if self.upsample:
            out = self.blur(out)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        return x + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                 blur_kernel=(1, 3, 3, 1), demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x, style, noise=None):
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.upsample = Upsample(blur_kernel) if upsample else None
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            if self.upsample is not None:
                skip = self.upsample(skip)
            out = out + skip
        return out


class ConvLayer(nn.Sequential):
    """StyleGAN2 discriminator conv: [blur] + equalized conv + [bias-act], children numbered as published."""

    def __init__(self, in_channel, out_channel, kernel_size, downsample=False,
                 blur_kernel=(1, 3, 3, 1), bias=True, activate=True):
        layers = []
        stride, padding = 1, kernel_size // 2
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding,
                                  stride=stride, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU())
        super().__init__(*layers)


class ResBlock(nn.Module):
    """StyleGAN2 residual discriminator block (downsamples by 2)."""

    def __init__(self, in_channel, out_channel, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class NamedConvLayer(nn.Sequential):
    """Swapping-Autoencoder conv with named children (Blur/RefPad, Conv, Act), as the public encoder.

    `pad` overrides the padding; `reflection_pad` pads by reflection instead of zeros.
    """

    def __init__(self, in_channel, out_channel, kernel_size, downsample=False, blur_kernel=(1, 3, 3, 1),
                 bias=True, activate=True, pad=None, reflection_pad=False):
        layers = []
        if downsample:
            if pad is None:
                pad = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(("Blur", Blur(blur_kernel, pad=((pad + 1) // 2, pad // 2), reflection_pad=reflection_pad)))
            stride, padding = 2, 0
        else:
            stride = 1
            padding = kernel_size // 2 if pad is None else pad
            if reflection_pad:
                layers.append(("RefPad", nn.ReflectionPad2d(padding)))
                padding = 0
        layers.append(("Conv", EqualConv2d(in_channel, out_channel, kernel_size, padding=padding,
                                           stride=stride, bias=bias and not activate)))
        if activate:
            layers.append(("Act", FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU()))
        super().__init__(OrderedDict(layers))


class NamedResBlock(nn.Module):
    """Swapping-Autoencoder residual block (downsamples by 2), used by the encoder and the patch D."""

    def __init__(self, in_channel, out_channel, blur_kernel=(1, 3, 3, 1), reflection_pad=False):
        super().__init__()
        self.conv1 = NamedConvLayer(in_channel, in_channel, 3, reflection_pad=reflection_pad)
        self.conv2 = NamedConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel,
                                    reflection_pad=reflection_pad)
        self.skip = NamedConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel,
                                   activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2

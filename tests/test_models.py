"""The networks against the published architecture: parameter counts, op equivalences, determinism."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from coordgan.config import PRESETS, get_preset
from coordgan.correspondence import canonical_grid
from coordgan.models import Discriminator, Encoder, Generator, PatchDiscriminator, count_parameters
from coordgan.models.layers import ModulatedConv2d, make_kernel, upfirdn2d


@pytest.mark.parametrize(
    "preset, net, expected",
    [
        ("celeba-128", Generator, 35_272_291),
        ("celeba-128", Encoder, 41_103_968),
        ("celeba-128", Discriminator, 28_389_889),
        ("celeba-512", Generator, 36_649_775),
    ],
)
def test_parameter_counts_match_published_models(preset, net, expected):
    assert count_parameters(net(get_preset(preset))) == expected


def test_tiny_preset_is_tiny():
    cfg = PRESETS["tiny"]
    assert cfg.size <= 32
    for net in (Generator(cfg), Encoder(cfg), Discriminator(cfg), PatchDiscriminator(cfg)):
        widest = max(max(p.shape[:2]) if p.ndim >= 4 else 0 for p in net.parameters())
        assert widest <= 64 + 2  # + the concatenated correspondence map


def _grouped_modconv(conv: ModulatedConv2d, x, style):
    """The public code's form: per-sample weights, demodulated, one grouped convolution."""
    batch, in_ch, h, w = x.shape
    s = conv.modulation(style).view(batch, 1, in_ch, 1, 1)
    weight = conv.scale * conv.weight * s
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(batch, conv.out_channel, 1, 1, 1)
    k = conv.kernel_size
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(batch * in_ch, conv.out_channel, k, k)
        out = F.conv_transpose2d(x.view(1, batch * in_ch, h, w), weight, stride=2, groups=batch)
        return conv.blur(out.view(batch, conv.out_channel, *out.shape[2:]))
    weight = weight.view(batch * conv.out_channel, in_ch, k, k)
    out = F.conv2d(x.view(1, batch * in_ch, h, w), weight, padding=conv.padding, groups=batch)
    return out.view(batch, conv.out_channel, *out.shape[2:])


@pytest.mark.parametrize("kernel_size, demodulate, upsample", [(3, True, False), (1, False, False), (3, True, True)])
def test_input_modulation_equals_grouped_conv(kernel_size, demodulate, upsample):
    torch.manual_seed(0)
    conv = ModulatedConv2d(24, 16, kernel_size, 32, demodulate=demodulate, upsample=upsample)
    with torch.no_grad():
        conv.modulation.bias.normal_()  # styles far from 1, so a wrong modulation would show
    x, style = torch.randn(5, 24, 12, 12), torch.randn(5, 32)
    ours, published = conv(x, style), _grouped_modconv(conv, x, style)
    rel = (ours - published).abs().max() / published.abs().max()
    assert ours.shape == published.shape
    assert rel < 1e-5


def _upfirdn2d_loop(x, kernel, up, down, pad):
    """Literal definition: zero-insert, zero-pad, correlate with the flipped kernel, subsample
    (in x's dtype; differentiable, to any order)."""
    n, c, h, w = x.shape
    up_x = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    up_x[:, :, ::up, ::up] = x
    p = F.pad(up_x, [pad[0], pad[1], pad[0], pad[1]])
    kf = torch.flip(kernel, [0, 1])
    kh, kw = kernel.shape
    out = torch.zeros(n, c, p.shape[2] - kh + 1, p.shape[3] - kw + 1, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out += kf[i, j] * p[:, :, i:i + out.shape[2], j:j + out.shape[3]]
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up, down, pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (2, 1)), (1, 2, (1, 0))])
def test_upfirdn2d_matches_definition(up, down, pad):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 9, 9)
    kernel = make_kernel([1, 2, 5, 3])  # asymmetric, so a missing flip would show
    assert torch.allclose(upfirdn2d(x, kernel, up, down, pad), _upfirdn2d_loop(x, kernel, up, down, pad), atol=1e-6)


@pytest.mark.parametrize("pad", [(2, 2), (1, 2), (0, 0), (5, 4)])  # (5, 4): adjoint pads below 0 crop
def test_upfirdn2d_first_and_second_derivatives(pad):
    """With a gradient wanted, the blur runs as its own autograd function (every derivative one
    depthwise conv): value, gradient and R1's gradient-of-gradient equal the literal definition's."""
    torch.manual_seed(2)
    kernel = make_kernel([1, 2, 5, 3]).double()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(2, 3, 7 + sum(pad) - 3, 8 + sum(pad) - 3, dtype=torch.float64)
    results = []
    for fn in (lambda t: upfirdn2d(t, kernel, pad=pad), lambda t: _upfirdn2d_loop(t, kernel, 1, 1, pad)):
        y = fn(x)
        (g,) = torch.autograd.grad((torch.tanh(y) * probe).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((fn(g) ** 2).sum(), x)  # a second derivative through the op
        results.append((y, g, gg))
    for ours, literal in zip(*results):
        assert torch.allclose(ours, literal, atol=1e-12)
    assert type(upfirdn2d(x, kernel, pad=pad).grad_fn).__name__ == "_PaddedFirBackward"


def test_folded_warp_equals_published_per_pixel_concatenation():
    cfg = PRESETS["tiny"]
    g = Generator(cfg)
    w_s = torch.randn(3, cfg.style_dim)
    coords = canonical_grid(cfg.base_size, cfg.base_size)
    hw = cfg.base_size**2
    x = torch.cat([coords.reshape(1, 2, hw).expand(3, -1, -1), w_s[:, :, None].expand(-1, -1, hw)], dim=1)
    net = g.foldnet
    published = torch.tanh(net.conv1_3(torch.relu(net.conv1_2(torch.relu(net.conv1_1(x))))))
    assert torch.allclose(g.warp(w_s).reshape(3, 2, hw), published, atol=1e-6)


def test_warp_latent_gain_scales_only_the_structure_code_weights_at_init():
    cfg = dataclasses.replace(PRESETS["tiny"], warp_latent_gain=1.0)
    torch.manual_seed(0)
    plain = Generator(cfg).foldnet.conv1_1
    torch.manual_seed(0)
    strong = Generator(dataclasses.replace(cfg, warp_latent_gain=4.0)).foldnet.conv1_1
    assert torch.equal(strong.weight[:, :2], plain.weight[:, :2])  # coordinate weights untouched
    assert torch.equal(strong.weight[:, 2:], plain.weight[:, 2:] * 4.0)
    assert torch.equal(strong.bias, plain.bias)


def test_canonical_grid_orientation():
    grid = canonical_grid(4, 6)
    assert torch.equal(grid[0, 0], torch.linspace(-1, 1, 6))  # x along width
    assert torch.equal(grid[1, :, 0], torch.linspace(-1, 1, 4))  # y along height


def test_fixed_noise_is_bit_identical_and_random_noise_is_not():
    cfg = PRESETS["tiny"]
    torch.manual_seed(3)
    g = Generator(cfg).eval()
    with torch.no_grad():
        for conv in g.convs:
            conv.noise.weight.fill_(0.5)  # make noise matter
        z_t, z_s = torch.randn(2, cfg.style_dim), torch.randn(2, cfg.style_dim)
        a, corr_a = g(z_t, z_s, noise_mode="const")
        b, corr_b = g(z_t, z_s, noise_mode="const")
        # a second generator with the same weights regenerates the same fixed noise
        g2 = Generator(cfg).eval()
        g2.load_state_dict(g.state_dict())
        c, _ = g2(z_t, z_s, noise_mode="const")
        r1, _ = g(z_t, z_s, noise_mode="random")
        r2, _ = g(z_t, z_s, noise_mode="random")
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(corr_a, corr_b)
    assert not torch.equal(r1, r2)


def test_generator_shapes_w_plus_and_explicit_noise():
    cfg = PRESETS["tiny"]
    g = Generator(cfg).eval()
    w_s = torch.randn(2, cfg.style_dim)
    w_plus = torch.randn(2, cfg.n_latent, cfg.style_dim)
    noise = [torch.zeros(2, 1, r, r) for r in g.noise_resolutions()]
    with torch.no_grad():
        image, corr = g(w_plus, w_s, input_is_w=True, noise=noise)
        image_none, _ = g(w_plus, w_s, input_is_w=True, noise_mode="none")
        # W equals W+ with the code repeated
        w = torch.randn(2, cfg.style_dim)
        img_w, _ = g(w, w_s, input_is_w=True, noise_mode="none")
        img_wp, _ = g(w[:, None].expand(-1, cfg.n_latent, -1), w_s, input_is_w=True, noise_mode="none")
    assert image.shape == (2, 3, cfg.size, cfg.size)
    assert corr.shape == (2, 2, cfg.base_size, cfg.base_size)
    assert corr.abs().max() <= 1
    assert torch.equal(image, image_none)
    assert torch.equal(img_w, img_wp)


def test_512_variant_upsamples_and_stops_at_earlier_stage():
    assert PRESETS["celeba-512"].n_latent == 16
    assert len(Generator(PRESETS["celeba-512"]).convs) == 14
    # the same layout at toy scale: two upsampling pairs on a 32 px base
    cfg = dataclasses.replace(PRESETS["tiny"], size=128, up_channels=(32, 16))
    g = Generator(cfg).eval()
    z = torch.randn(1, cfg.style_dim)
    with torch.no_grad():
        corr = g.warp(g.map_structure(z))
        w_t = g.map_texture(z)
        assert g.synthesize(w_t, corr, noise_mode="const", size=32).shape[-1] == 32
        assert g.synthesize(w_t, corr, noise_mode="const", size=64).shape[-1] == 64
        assert g.synthesize(w_t, corr, noise_mode="const").shape[-1] == 128


def test_encoder_and_discriminators_shapes():
    cfg = PRESETS["tiny"]
    x = torch.randn(4, 3, cfg.size, cfg.size)
    w_s, w_t = Encoder(cfg)(x)
    assert w_s.shape == (4, cfg.style_dim) and w_t.shape == (4, cfg.n_texture_codes, cfg.style_dim)
    assert Discriminator(cfg)(x).shape == (4, 1)
    pd = PatchDiscriminator(cfg)
    patches = torch.randn(2, cfg.patch_num_crops, 3, cfg.patch_size, cfg.patch_size)
    ref = pd.extract_features(patches, aggregate=True)
    real = pd.extract_features(patches)
    assert pd.discriminate_features(real, ref).shape == (2 * cfg.patch_num_crops, 1)


def test_encoder_at_published_scale_gives_12_w_plus_codes():
    cfg = PRESETS["celeba-128"]
    with torch.no_grad():
        w_s, w_t = Encoder(cfg)(torch.randn(1, 3, 128, 128))
    assert w_s.shape == (1, 512) and w_t.shape == (1, 12, 512)
    assert math.isfinite(float(w_t.abs().sum()))

"""Training objectives on the tiny preset: the differentiable soft warp, every loss term finite,
and a gradient reaching every named parameter group of G, D and the patch D."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from coordgan.config import PRESETS
from coordgan.correspondence import canonical_grid, lookup
from coordgan.models import build
from coordgan.train import losses as L
from coordgan.train.loop import Run, RunOptions
from coordgan.train.perceptual import build_lpips
from coordgan.train.trainer import GeneratorTraining
from coordgan.train.warp_ops import soft_warp
from runtime.errors import CoordGANError

TINY = PRESETS["tiny"]


def groups(module: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters by named group: each top-level child, and each item of a ModuleList/Sequential."""
    out: dict[str, list] = {}
    for name, p in module.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        out.setdefault(key, []).append(p)
    return out


def groups_with_grad(module) -> set[str]:
    return {k for k, ps in groups(module).items()
            if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in ps)}


@pytest.fixture(scope="module")
def lpips():
    return build_lpips("alex", random_backbone=True)[0]


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return build(TINY, which=("g", "d", "d_patch"))


def _maps(gen, n, h, w):
    grid = canonical_grid(h, w, dtype=torch.float64)
    bump = torch.nn.functional.interpolate(torch.randn(n, 2, 3, 3, generator=gen, dtype=torch.float64),
                                           size=(h, w), mode="bilinear", align_corners=True)
    return torch.tanh(1.5 * grid + 0.3 * bump)


# -- soft warp ------------------------------------------------------------------------------------


def test_soft_warp_equals_lookup():
    gen = torch.Generator().manual_seed(1)
    q, k = _maps(gen, 2, 9, 7).float(), _maps(gen, 2, 6, 8).float()
    values = torch.rand(2, 3, 6, 8, generator=gen)
    expected, _ = lookup(q, k[:, None], values[:, None], tau=0.01)
    for chunk in (5, 4096):
        got = soft_warp(q, k, values, 0.01, chunk_size=chunk)
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    # any real values, not only probabilities: the weights sum to one
    torch.testing.assert_close(soft_warp(q, k, values - 0.5, 0.01), expected - 0.5, rtol=0, atol=2e-6)


def _dense(q, k, v, tau):
    n, c = v.shape[:2]
    qf, kf, vf = (t.flatten(2).transpose(1, 2) for t in (q, k, v))
    d = torch.norm(qf[:, :, None] - kf[:, None], dim=-1)
    out = torch.softmax(-d / tau, dim=-1) @ vf
    return out.transpose(1, 2).reshape(n, c, *q.shape[2:])


def test_soft_warp_gradients_match_dense_autograd():
    gen = torch.Generator().manual_seed(2)
    q, k = _maps(gen, 2, 5, 6), _maps(gen, 2, 4, 4)
    k[0, :, 1, 2] = q[0, :, 3, 3]  # a coincident pair: the distance's gradient is taken as 0 there
    v = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    for tau in (0.01, 0.3):
        ins = [t.clone().requires_grad_(True) for t in (q, k, v)]
        ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
        got = torch.autograd.grad(soft_warp(*ins, tau, chunk_size=7), ins, g)
        want = torch.autograd.grad(_dense(*ref, tau), ref, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda a, b, c: soft_warp(a, b, c, 0.3, chunk_size=4),
                                    [t.clone().requires_grad_(True) for t in (q, k, v)])


def test_soft_warp_keeps_no_affinity_matrix_for_backward():
    """Autograd stores O(pixels) tensors, never the (queries x references) affinities."""
    gen = torch.Generator().manual_seed(3)
    q, k = (_maps(gen, 2, 32, 32).float().requires_grad_(True) for _ in range(2))
    v = torch.rand(2, 3, 32, 32, generator=gen, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = soft_warp(q, k, v, 0.01, chunk_size=256)
    pixels = 2 * 32 * 32
    assert sum(saved) <= 16 * pixels < 2 * 1024 * 1024  # a dense version saves >= N * 1024 * 1024
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_soft_warp_rejects_bad_shapes():
    with pytest.raises(CoordGANError, match="ref_values"):
        soft_warp(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 5, 4))


# -- losses ---------------------------------------------------------------------------------------


def test_ramp_pairs_and_crops():
    assert [L.ramp(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert L.ramp(0, 0) == 1.0
    assert L.pair_swap(6).tolist() == [1, 0, 3, 2, 5, 4]
    torch.manual_seed(0)
    flat = torch.full((2, 3, 32, 32), 0.25)
    crops = L.random_crops(flat, 8, 16, 0.125, 0.25)
    assert crops.shape == (2, 8, 3, 16, 16)
    torch.testing.assert_close(crops, torch.full_like(crops, 0.25))  # inside the image: no padding


def test_luminance_ignores_colour_and_keeps_layout(lpips):
    """The colour-blind texture-swap distance: recolouring costs nothing, moving the content does."""
    torch.manual_seed(4)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 6, 6) * 2 - 1, size=(32, 32), mode="bilinear")
    recoloured = (x[:, [2, 0, 1]] * 0.6 + 0.2)  # same grey layout, other colours and contrast
    tinted = x + torch.tensor([0.3, -0.1, -0.2]).view(1, 3, 1, 1)  # other hues, the same channel mean
    moved = torch.roll(x, shifts=3, dims=3)
    lum = L.luminance(x)
    assert lum.shape == x.shape and lum.min() >= -1 and lum.max() <= 1
    assert torch.equal(lum[:, 0], lum[:, 2])
    torch.testing.assert_close(L.luminance(recoloured), lum, atol=1e-2, rtol=0)  # the eps beside the std
    torch.testing.assert_close(L.luminance(tinted), lum, atol=1e-5, rtol=0)
    flat = torch.zeros(1, 3, 8, 8, requires_grad=True)
    L.luminance(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()  # a flat image: zero layout, finite gradient
    with torch.no_grad():
        assert L.perceptual(lpips, lum, L.luminance(recoloured)) < 1e-3
        assert L.perceptual(lpips, lum, L.luminance(moved)) > 0.01
        assert L.perceptual(lpips, x, recoloured) > 0.01  # RGB does pay for the colours
        assert L.perceptual(lpips, x, tinted) > 0.01


def test_discriminator_losses_reach_every_group(nets):
    torch.manual_seed(1)
    g, d, dp = nets["g"], nets["d"], nets["d_patch"]
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        fake, _ = g(torch.randn(4, 64), torch.randn(4, 64))
    swapped = fake.flip(0)
    loss = L.d_logistic(d(real), d(fake))
    patch = L.patch_d_loss(dp, fake, swapped, TINY)
    assert torch.isfinite(loss) and torch.isfinite(patch)
    (loss + patch).backward()
    assert groups_with_grad(d) == set(groups(d))
    assert groups_with_grad(dp) == set(groups(dp))
    for net in (d, dp):
        net.zero_grad(set_to_none=True)
    real_r = real.clone().requires_grad_(True)
    r1 = L.r1_penalty(d(real_r), [real_r])
    r1_patch = L.patch_r1(dp, fake, TINY)
    assert torch.isfinite(r1) and r1 > 0 and torch.isfinite(r1_patch) and r1_patch > 0
    (r1 + r1_patch).backward()
    # R1 differentiates a gradient: bias-only groups (leaky-ReLU biases) get exactly zero, the rest not
    for net in (d, dp):
        weighted = {k for k, ps in groups(net).items() if any(p.dim() > 1 for p in ps)}
        assert weighted <= groups_with_grad(net)


def test_generator_losses_reach_their_groups(nets, lpips):
    torch.manual_seed(2)
    g, d, dp = nets["g"], nets["d"], nets["d_patch"]
    w_t, w_s = g.map_texture(torch.randn(4, 64)), g.map_structure(torch.randn(4, 64))
    corr = g.warp(w_s)
    perm = L.pair_swap(4)
    x = g.synthesize(w_t, corr)
    x_t = g.synthesize(w_t[perm], corr)
    terms = {
        "gan": L.g_nonsaturating(d(x)),
        "texture": L.perceptual(lpips, x, x_t),
        "texture_luminance": L.perceptual(lpips, L.luminance(x), L.luminance(x_t)),
        "structure": L.patch_g_loss(dp, x, x_t[perm], TINY),
        "warp": L.warp_loss(lpips, x, corr, 0.01),
        "chamfer": L.chamfer_loss(corr, g.grid),
    }
    everything = set(groups(g))
    structure_branch = {k for k in everything if k.startswith(("struc", "foldnet"))}
    expected = {"gan": everything, "texture": everything, "texture_luminance": everything,
                "structure": everything, "warp": everything, "chamfer": structure_branch}
    for name, value in terms.items():
        assert torch.isfinite(value), name
        g.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        assert groups_with_grad(g) == expected[name], name


def test_one_training_step_updates_every_group(tmp_path, lpips):
    """A full D / R1 / G step with the ramps at 1 moves every named group of every network."""
    cfg = dataclasses.replace(TINY, losses=dataclasses.replace(TINY.losses, warmup_iters=0))
    torch.manual_seed(3)
    task = GeneratorTraining(cfg, Run(RunOptions(out=Path(tmp_path), steps=1, batch=4)), lpips)
    before = {k: {n: p.detach().clone() for n, p in net.named_parameters()}
              for k, net in task.checkpoint_networks().items() if k != "g_ema"}
    record = task.train_step(0, torch.rand(4, 3, 32, 32) * 2 - 1)  # step 0 is an R1 step too
    assert {"d_gan", "d_patch", "r1", "r1_patch", "g_gan", "g_texture", "g_structure", "g_warp",
            "g_chamfer"} <= set(record)
    assert all(torch.isfinite(torch.tensor(v)) for v in record.values())
    for key, params in before.items():
        net = task.checkpoint_networks()[key]
        changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[key][n])}
        names = {id(p): n for n, p in net.named_parameters()}
        moved = {grp for grp, ps in groups(net).items() if any(names[id(p)] in changed for p in ps)}
        assert moved == set(groups(net)), (key, set(groups(net)) - moved)


def test_default_chunk_bounds_the_distances_held_at_once():
    """Without a chunk_size the losses take 4096 query points on a CPU; on a GPU as many as keep a
    chunk's distances within 2^26 (256 MiB of float32): large at 32 px, the same 4096 at 128 px."""
    from coordgan.train.warp_ops import default_chunk

    gpu = torch.device("cuda")  # (a device object only: nothing runs on it)
    assert default_chunk(torch.device("cpu"), 32 * 32) == default_chunk(torch.device("cpu"), 128 * 128) == 4096
    assert default_chunk(gpu, 32 * 32) == 65536 and default_chunk(gpu, 128 * 128) == 4096
    for m in (32 * 32, 64 * 64, 128 * 128, 256 * 256, 512 * 512):
        assert default_chunk(gpu, m) * m <= 1 << 26


def test_ema_update_is_a_per_tensor_lerp():
    """update_ema's multi-tensor form gives exactly what lerp_ / copy_ per tensor give."""
    import copy

    from coordgan.train.trainer import update_ema

    torch.manual_seed(0)
    model = build(TINY)["g"]
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        for b in model.buffers():
            b.add_(1)
    expected = copy.deepcopy(ema)
    with torch.no_grad():
        for pe, p in zip(expected.parameters(), model.parameters()):
            pe.lerp_(p, 1 - 0.99)
        for be, b in zip(expected.buffers(), model.buffers()):
            be.copy_(b)
    update_ema(ema, model, 0.99)
    for (name, a), b in zip(ema.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name

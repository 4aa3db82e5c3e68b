"""Procedural faces with ground-truth part labels, deterministic from a seed.

A face is drawn from implicit shapes (approximate signed distances evaluated on the pixel grid), in
painter's order, so the image and the label map come from the same geometry and are pixel-aligned:
a pixel's label is the topmost shape whose distance is negative, and its color is that shape's
color times a smooth shading factor (blended only across the half-pixel edge for anti-aliasing).

Coordinates: the image spans [-1, 1] on both axes (x along width, y down). A face lives in "face
units" (head half-height about 0.9); pose maps face units to the image by rotation, scale and
translation, a low-frequency displacement field bends the face non-rigidly, and yaw compresses the
features towards one side as if the head turned on a sphere.

numpy only (no torch): tests, demos and data loaders use it; `coordgan.data.synthetic_dataset`
serves it as a dataset and writes it to image folders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from runtime.errors import CoordGANError
from runtime.io import masks
from runtime.io.masks import DAVIS_PALETTE

__all__ = [
    "PART_NAMES",
    "PALETTE",
    "FaceParams",
    "sample_params",
    "face_params",
    "render",
    "face_coordinates",
    "make_images",
    "make_sequence",
    "colorize",
]

PART_NAMES: tuple[str, ...] = ("background", "skin", "ears", "eyes", "brows", "nose", "mouth", "hair")
BACKGROUND, SKIN, EARS, EYES, BROWS, NOSE, MOUTH, HAIR = range(len(PART_NAMES))
_SCALE_RANGE = (0.64, 0.78)  # pose scale: face units -> image units
_MEAN_SCALE = sum(_SCALE_RANGE) / 2


PALETTE: list[int] = list(DAVIS_PALETTE)  # DAVIS / PASCAL VOC colours, 256 entries

Color = tuple[float, float, float]
Wave = tuple[float, ...]


@dataclass(frozen=True)
class FaceParams:
    """Every random choice of one face. Lengths in face units unless noted; colors RGB in [0, 1]."""

    # pose (image units for translation; radians for angles)
    tx: float
    ty: float
    angle: float
    scale: float  # face units -> image units
    yaw: float  # > 0 turns the features to the image right
    # head
    head_rx: float
    head_ry: float
    chin: float  # narrowing of the jaw, 0 = plain ellipse
    neck_w: float
    ear_y: float
    ear_w: float
    ear_h: float
    # features
    eye_x: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_tilt: float
    brow_bend: float
    nose_top: float
    nose_bottom: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_h: float
    smile: float
    # expression (animated by make_sequence)
    mouth_open: float  # 0 closed .. 1 wide open
    eye_open: float  # 0 shut .. 1 open
    brow_raise: float
    # hair
    hair_style: int  # 0 bald, 1 short, 2 long
    hairline: float
    hairline_curve: float
    hairline_tilt: float
    hair_volume: float
    hair_length: float
    hair_strands: tuple[float, float]  # (angular frequency, amplitude) of the strand texture
    # colors
    skin: Color
    ears: Color
    eyes: Color
    brows: Color
    nose: Color
    mouth: Color
    hair: Color
    bg: Color
    bg2: Color
    # texture
    light: tuple[float, float]  # shading gradient over the face (per face unit)
    shade: tuple[Wave, ...]  # (wx, wy, phase, amp): smooth multiplicative noise on the face
    bg_kind: int  # 0 stripes, 1 blobs, 2 gradient
    bg_waves: tuple[Wave, ...]  # (wx, wy, phase) in image units
    # non-rigid deformation: displacement sum of (ax, ay) * sin(wx x + wy y + phase + speed * time)
    deform: tuple[Wave, ...]  # (wx, wy, phase, ax, ay, speed)
    deform_time: float = 0.0

    def part_colors(self) -> np.ndarray:
        """(len(PART_NAMES), 3) float32 base color of each label; background gets `bg`."""
        return np.array(
            [self.bg, self.skin, self.ears, self.eyes, self.brows, self.nose, self.mouth, self.hair],
            dtype=np.float32,
        )


# ---------------------------------------------------------------- sampling


# Part colors stay at or below _MAX so that shading (up to about +20 %) rarely clips at white:
# clipping would change a part's hue, and "pixel = part color x shading" is what makes labels checkable.
_MAX = 0.86


def _lum(c) -> float:
    return float(np.dot(c, (0.299, 0.587, 0.114)))


def _away(color, ref, dist: float) -> Color:
    """Move `color` towards black (light ref) or white (dark ref) until it is `dist` from `ref`.

    Adjacent parts must differ in color, or the image would not show where the labels are.
    """
    c = np.clip(np.asarray(color, dtype=np.float64), 0, 1)
    ref = np.asarray(ref, dtype=np.float64)
    target = np.zeros(3) if _lum(ref) > 0.45 else np.full(3, _MAX)
    for _ in range(40):
        if np.linalg.norm(c - ref) >= dist:
            break
        c = c + 0.1 * (target - c)
    return tuple(float(v) for v in c)


def _jitter(rng, c, amount: float) -> Color:
    return tuple(float(v) for v in np.clip(np.asarray(c) + rng.uniform(-amount, amount, 3), 0, _MAX))


_HAIR_COLORS = [
    (0.07, 0.05, 0.04), (0.25, 0.15, 0.08), (0.45, 0.29, 0.16), (0.82, 0.66, 0.38),
    (0.62, 0.24, 0.09), (0.68, 0.68, 0.68), (0.20, 0.30, 0.70), (0.85, 0.40, 0.65),
]
_HAIR_P = [0.24, 0.22, 0.16, 0.12, 0.09, 0.09, 0.04, 0.04]
_IRIS_COLORS = [(0.32, 0.18, 0.09), (0.22, 0.42, 0.72), (0.28, 0.52, 0.32), (0.45, 0.50, 0.55),
                (0.08, 0.06, 0.06)]


def _waves(rng, n: int, fmin: float, fmax: float) -> np.ndarray:
    """n plane waves with random direction, frequency in [fmin, fmax], and phase: (n, 3)."""
    ang = rng.uniform(0, 2 * np.pi, n)
    f = rng.uniform(fmin, fmax, n)
    return np.stack([f * np.cos(ang), f * np.sin(ang), rng.uniform(0, 2 * np.pi, n)], 1)


def _tup(a) -> tuple:
    return tuple(tuple(float(v) for v in row) for row in a)


def sample_params(rng: np.random.Generator) -> FaceParams:
    """Draw one face. Deterministic given the generator state."""
    u = rng.uniform
    head_rx, head_ry = u(0.62, 0.74), u(0.84, 0.94)
    eye_w = u(0.085, 0.115)

    # colors: skin along a light-to-dark tone line, the rest pushed away from the skin
    tone = u(0, 1)
    skin = _jitter(rng, (1 - tone) * np.array([0.86, 0.73, 0.62]) + tone * np.array([0.38, 0.23, 0.15]), 0.03)
    ears = _away(np.array(skin) * (0.84, 0.70, 0.68), skin, 0.17)
    nose = _away(np.array(skin) * (0.84, 0.70, 0.68), skin, 0.17)
    eyes = _away(_jitter(rng, _IRIS_COLORS[rng.integers(len(_IRIS_COLORS))], 0.05), skin, 0.3)
    if u() < 0.15:  # lipstick
        lips = _jitter(rng, (0.70, 0.10, 0.22), 0.08)
    else:
        lips = _jitter(rng, np.array(skin) * (0.95, 0.55, 0.55) + (0.08, 0, 0.02), 0.04)
    mouth = _away(lips, skin, 0.2)
    hair = _away(_jitter(rng, _HAIR_COLORS[rng.choice(len(_HAIR_COLORS), p=_HAIR_P)], 0.04), skin, 0.25)
    brows = _away(np.array(hair) * 0.7, skin, 0.3)
    bg = _away(_away(tuple(u(0.05, 0.95, 3)), skin, 0.25), hair, 0.15)
    bg2 = _away(np.clip(np.array(bg) + u(-0.35, 0.35, 3), 0, 1), skin, 0.2)

    hair_style = int(rng.choice(3, p=[0.1, 0.5, 0.4]))
    shade_w = _waves(rng, 4, 1.5, 4.0)
    shade = np.concatenate([shade_w, u(0.005, 0.02, (4, 1))], 1)
    light_ang = u(0, 2 * np.pi)
    light = u(0.05, 0.12)
    deform_w = _waves(rng, 4, 1.0, 3.0)
    deform_a = u(-1, 1, (4, 2)) * 0.035
    deform = np.concatenate([deform_w, deform_a, u(0.03, 0.08, (4, 1)) * rng.choice([-1, 1], (4, 1))], 1)

    return FaceParams(
        tx=u(-0.1, 0.1), ty=u(-0.08, 0.1), angle=u(-0.3, 0.3), scale=u(*_SCALE_RANGE), yaw=u(-0.3, 0.3),
        head_rx=head_rx, head_ry=head_ry, chin=u(0.1, 0.35), neck_w=head_rx * u(0.45, 0.6),
        ear_y=u(-0.05, 0.08), ear_w=u(0.1, 0.14), ear_h=u(0.17, 0.24),
        eye_x=u(0.24, 0.3), eye_y=u(-0.12, -0.03), eye_w=eye_w, eye_h=u(0.042, 0.06),
        eye_tilt=u(-0.15, 0.2),
        brow_gap=u(0.13, 0.18), brow_len=eye_w * u(1.1, 1.4), brow_thick=u(0.03, 0.05),
        brow_tilt=u(-0.2, 0.15), brow_bend=u(0.0, 0.35),
        nose_top=u(-0.06, 0.0), nose_bottom=u(0.2, 0.3), nose_w=u(0.07, 0.1),
        mouth_y=u(0.43, 0.52), mouth_w=u(0.15, 0.22), mouth_h=u(0.03, 0.05), smile=u(-0.3, 0.8),
        mouth_open=float(u(0, 1) ** 3), eye_open=u(0.75, 1.0), brow_raise=0.0,
        hair_style=hair_style, hairline=-head_ry * u(0.48, 0.62), hairline_curve=u(0.0, 0.5),
        hairline_tilt=u(-0.15, 0.15), hair_volume=u(0.02, 0.12), hair_length=u(0.6, 1.4),
        hair_strands=(float(u(18, 40)), float(u(0.03, 0.08))),
        skin=skin, ears=ears, eyes=eyes, brows=brows, nose=nose, mouth=mouth, hair=hair, bg=bg, bg2=bg2,
        light=(float(light * np.cos(light_ang)), float(light * np.sin(light_ang))),
        shade=_tup(shade), bg_kind=int(rng.integers(3)), bg_waves=_tup(_waves(rng, 3, 3.0, 14.0)),
        deform=_tup(deform),
    )


# ---------------------------------------------------------------- implicit shapes


def _ellipse(x, y, a, b):
    """Approximate signed distance to an axis-aligned ellipse (first-order, exact on the boundary)."""
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    return (k0 - 1) * np.where(k1 > 1e-6, k0 / np.maximum(k1, 1e-6), min(a, b))


def _lens(x, y, w, h):
    """Almond (intersection of two circles) of half-width w and half-height h."""
    h = max(h, 1e-3)
    r = (w * w + h * h) / (2 * h)
    c = r - h
    return np.maximum(np.hypot(x, y - c) - r, np.hypot(x, y + c) - r)


def _rotate(x, y, ang):
    c, s = np.cos(ang), np.sin(ang)
    return c * x + s * y, -s * x + c * y


def check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise CoordGANError(f"Image size must be a positive integer, got {size!r}.")
    return int(size)


# ---------------------------------------------------------------- rendering


def _background(p: FaceParams, x, y):
    w = np.asarray(p.bg_waves, dtype=np.float32)
    if p.bg_kind == 0:  # stripes: one wave, sharpened to soft-edged bands
        m = np.clip(0.5 + 1.5 * np.sin(w[0, 0] * x + w[0, 1] * y + w[0, 2]), 0, 1)
    elif p.bg_kind == 1:  # blobs: sum of low-frequency waves, thresholded softly
        n = sum(np.sin(0.4 * w[k, 0] * x + 0.4 * w[k, 1] * y + w[k, 2]) for k in range(len(w)))
        m = np.clip(0.5 + 1.2 * n, 0, 1)
    else:  # gradient with a faint ripple
        d = w[0, :2] / np.linalg.norm(w[0, :2])
        m = np.clip(0.5 + 0.5 * (d[0] * x + d[1] * y) + 0.05 * np.sin(w[1, 0] * x + w[1, 1] * y), 0, 1)
    bg, bg2 = np.asarray(p.bg, np.float32), np.asarray(p.bg2, np.float32)
    return bg + m[..., None] * (bg2 - bg)


def _pixel_grid(size: int):
    """Pixel centres in image coordinates: x, y (size, size) float32 in (-1, 1)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    return np.meshgrid(c, c)


def _face_units(p: FaceParams, x, y):
    """Image coordinates -> face units: (fx, fy) of the head, u where the features lie across the yaw,
    and r, the radius of the yaw sphere."""
    f32 = np.float32
    # undo translation, rotation and scale, then the non-rigid displacement
    fx, fy = _rotate(x - f32(p.tx), y - f32(p.ty), f32(p.angle))
    fx, fy = fx / f32(p.scale), fy / f32(p.scale)
    dx = np.zeros_like(fx)
    dy = np.zeros_like(fy)
    for wx, wy, ph, ax, ay, sp in p.deform:
        s = np.sin(f32(wx) * fx + f32(wy) * fy + f32(ph + sp * p.deform_time))
        dx += f32(ax) * s
        dy += f32(ay) * s
    fx, fy = fx + dx, fy + dy
    # yaw: the features sit on a sphere of radius r; pixel fx shows the feature at u
    r = p.head_rx * 1.1
    u = r * np.sin(np.arcsin(np.clip(fx / r, -1, 1)) - p.yaw)
    return fx, fy, u, r


def face_coordinates(params: FaceParams, size: int) -> np.ndarray:
    """The ground-truth correspondence map of a face: (2, size, size) float32 in [-1, 1].

    Each pixel holds the point of the face template it shows, (u, fy) in face units times the
    mean pose scale (so a pixel step is about one canonical-grid step), clipped to [-1, 1]; beyond
    the yaw sphere u continues fx instead of sticking at its edge. Two faces agree where they show
    the same template point. Label propagation through these maps is the reference ceiling beside
    the identity baseline: not a strict bound, as each face places its parts a little differently
    on the template (eye spacing, mouth height, ...).
    """
    p = params
    fx, fy, u, r = _face_units(p, *_pixel_grid(check_size(size)))
    u = np.where(np.abs(fx) < r, u, fx - np.sign(fx) * r * (1 - np.cos(p.yaw)))
    return np.clip(np.stack([u, fy]) * _MEAN_SCALE, -1, 1).astype(np.float32)


def render(params: FaceParams, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one face: image (size, size, 3) uint8 and labels (size, size) uint8 (ids of PART_NAMES)."""
    size = check_size(size)
    p = params
    f32 = np.float32
    x, y = _pixel_grid(size)
    img = _background(p, x, y)
    lab = np.zeros((size, size), np.uint8)
    fx, fy, u, _ = _face_units(p, x, y)
    aa = 2.0 / size / p.scale  # one pixel in face units: the anti-aliasing ramp width

    # shading: light gradient + smooth noise, attached to the face so it moves with it
    shade = 1 + f32(p.light[0]) * fx + f32(p.light[1]) * fy
    for wx, wy, ph, amp in p.shade:
        shade += f32(amp) * np.sin(f32(wx) * fx + f32(wy) * fy + f32(ph))

    def bbox(sdf, r0=0, c0=0):
        """Slices of the rows and columns where sdf touches pixels (None when nowhere)."""
        hit = sdf < 0.5 * aa
        rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
        if not len(rows):
            return None
        return np.s_[r0 + rows[0] : r0 + rows[-1] + 1, c0 + cols[0] : c0 + cols[-1] + 1]

    def paint(sdf, label, color, gain=None, crop=np.s_[:, :]):
        # sdf covers img[crop]; blend only inside the box of touched pixels: most parts are small
        r0, c0 = crop[0].start or 0, crop[1].start or 0
        box = bbox(sdf, r0, c0)
        if box is None:
            return
        d = sdf[box[0].start - r0 : box[0].stop - r0, box[1].start - c0 : box[1].stop - c0]
        alpha = np.clip(0.5 - d / aa, 0, 1)[..., None]
        g = shade[box] if gain is None else shade[box] * (gain if np.isscalar(gain) else gain[box])
        col = g[..., None] * np.asarray(color, f32)
        img[box] += alpha * (col - img[box])
        lab[box][d < 0] = label

    hx = fx / (1 - p.chin * np.clip(fy / p.head_ry, 0, 1) ** 2)  # jaw narrows towards the chin
    head = _ellipse(hx, fy, p.head_rx, p.head_ry)

    if p.hair_style:
        freq, amp = p.hair_strands
        strands = 1 + amp * np.sin(freq * np.arctan2(fx, 0.5 - fy))  # strands fan out from below the crown
        if p.hair_style == 1:  # short: a cap above the ears
            rx, ry = p.head_rx * (1.06 + p.hair_volume), p.head_ry * (1 + 0.6 * p.hair_volume)
            vol = _ellipse(fx, fy + 0.06, rx, ry)
            back = np.maximum(vol, fy - (p.ear_y - 0.08))
        else:  # long: falls behind the neck to hair_length
            rx, ry = p.head_rx * (1.18 + p.hair_volume), p.head_ry * (1.2 + p.hair_volume)
            vol = _ellipse(fx, fy - 0.1, rx, ry)
            back = np.maximum(vol, fy - p.hair_length)
        paint(back, HAIR, p.hair, strands)

    neck_w = p.neck_w * (1 + 0.25 * np.clip(fy - p.head_ry, 0, None))
    paint(np.maximum(np.abs(fx) - neck_w, 0.3 * p.head_ry - fy), SKIN, p.skin, 0.88)  # shadowed under the jaw

    for side in (-1, 1):
        # the ear on the side the face turns away from shows more
        ew = p.ear_w * max(0.3, 1 - 0.9 * side * p.yaw)
        paint(_ellipse(fx - side * p.head_rx * 0.97, fy - p.ear_y, ew, p.ear_h), EARS, p.ears)

    paint(head, SKIN, p.skin)

    if p.hair_style:
        line = p.hairline + p.hairline_curve * u * u + p.hairline_tilt * u
        paint(np.maximum(head - 0.01, fy - line), HAIR, p.hair, strands)

    # features are clipped to the head so no deformation or yaw can push them off it, and are
    # evaluated only inside the head's box (the full grid would cost twice as much)
    crop = bbox(head)
    if crop is None:  # head entirely off the image
        return _to_uint8(img), lab
    u, fy, head = u[crop], fy[crop], head[crop]
    for side in (-1, 1):
        bx, by = _rotate(u - side * p.eye_x, fy - (p.eye_y - p.brow_gap - p.brow_raise), side * p.brow_tilt)
        by = by - p.brow_bend * bx * bx / p.brow_len  # arch: the ends sit lower
        paint(np.maximum(_ellipse(bx, by, p.brow_len, p.brow_thick), head), BROWS, p.brows, crop=crop)
        ex, ey = _rotate(u - side * p.eye_x, fy - p.eye_y, side * p.eye_tilt)
        paint(np.maximum(_lens(ex, ey, p.eye_w, p.eye_h * p.eye_open), head), EYES, p.eyes, crop=crop)

    # nose: a triangle from the bridge to a rounded tip
    top, bot, w = p.nose_top, p.nose_bottom, p.nose_w
    n1 = np.hypot(bot - top, w)
    sides = (np.abs(u) * (bot - top) - (fy - top) * w * 0.8) / n1
    tri = np.maximum(sides, fy - bot)
    tip = _ellipse(u, fy - (bot - 0.03), w, 0.05)
    paint(np.maximum(np.minimum(tri, tip), head), NOSE, p.nose, crop=crop)

    # mouth: a bent ellipse that opens taller and less curved
    op = p.mouth_open
    mx, my = u, fy - (p.mouth_y + 0.03 * op)
    mw = p.mouth_w * (1 - 0.15 * op)
    my = my + p.smile * (1 - op) * mx * mx / mw  # smile: the corners sit higher
    paint(np.maximum(_ellipse(mx, my, mw, p.mouth_h + 0.09 * op), head), MOUTH, p.mouth, crop=crop)
    return _to_uint8(img), lab


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- collections


def _rng(seed: int, *key: int) -> np.random.Generator:
    # One independent stream per (seed, key): image i never depends on how many images are made.
    return np.random.default_rng(np.random.SeedSequence(int(seed) % 2**64, spawn_key=key))


def check_count(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise CoordGANError(f"{what} must be a non-negative integer, got {n!r}.")
    return int(n)


def face_params(seed: int, index: int) -> FaceParams:
    """Parameters of image `index` of make_images(..., seed)."""
    return sample_params(_rng(seed, 0, int(index)))


def make_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n faces: images (n, size, size, 3) uint8 and labels (n, size, size) uint8."""
    n, size = check_count(n, "The number of images"), check_size(size)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    for i in range(n):
        images[i], labels[i] = render(face_params(seed, i), size)
    return images, labels


def _sequence_params(seed: int, motion: float):
    """Base face and a function frame index -> FaceParams; frame i depends only on (seed, motion, i)."""
    rng = _rng(seed, 1)
    base = sample_params(rng)
    base = replace(base, tx=base.tx * 0.5, ty=base.ty * 0.5, yaw=base.yaw * 0.5, mouth_open=0.0, eye_open=1.0)
    # (amplitude, period in frames, phase) per animated quantity; periods of 30-90 frames keep it smooth
    names = ("tx", "ty", "angle", "scale", "yaw", "mouth", "eye", "brow")
    amps = (0.12, 0.07, 0.15, 0.08, 0.3, 1.0, 0.2, 0.03)
    osc = {k: (a, rng.uniform(30, 90), rng.uniform(0, 2 * np.pi)) for k, a in zip(names, amps)}
    drift = rng.uniform(-1, 1, 2) * 0.002  # a slow drift so the face does not merely oscillate in place

    def wave(k, t):
        a, period, ph = osc[k]
        return motion * a * (np.sin(2 * np.pi * t / period + ph) - np.sin(ph))  # zero at frame 0

    def at(t: int) -> FaceParams:
        return replace(
            base,
            tx=float(np.clip(base.tx + wave("tx", t) + motion * drift[0] * t, -0.4, 0.4)),
            ty=float(np.clip(base.ty + wave("ty", t) + motion * drift[1] * t, -0.4, 0.4)),
            angle=float(np.clip(base.angle + wave("angle", t), -0.6, 0.6)),
            scale=float(np.clip(base.scale * (1 + wave("scale", t)), 0.5, 0.9)),
            yaw=float(np.clip(base.yaw + wave("yaw", t), -0.35, 0.35)),
            mouth_open=float(np.clip(0.5 * abs(wave("mouth", t)), 0, 1)),
            eye_open=float(np.clip(1 - abs(wave("eye", t)), 0.3, 1)),
            brow_raise=float(wave("brow", t)),
            deform_time=float(motion * t),
        )

    return at


def make_sequence(n_frames: int, size: int, seed: int, motion: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A face moving and deforming smoothly: frames (n, size, size, 3) uint8, masks (n, size, size) uint8.

    Pose, expression (mouth, eyes, brows) and the deformation field's phase follow slow sinusoids;
    colors, texture and background stay fixed. `motion` scales every movement (0 = still).
    Frame i depends only on (seed, motion, i), so a longer sequence extends a shorter one.
    """
    n, size = check_count(n_frames, "The number of frames"), check_size(size)
    at = _sequence_params(seed, float(motion))
    frames = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for t in range(n):
        frames[t], masks[t] = render(at(t), size)
    return frames, masks


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map -> RGB uint8 with PALETTE, for looking at masks."""
    return masks.colorize(np.asarray(labels, np.uint8), DAVIS_PALETTE)

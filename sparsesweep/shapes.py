"""Procedurally rendered grayscale shapes: a clean- vs cluttered-background classification set.

An embedded analogue of "ObjectNet3D renderings on a clean vs a cluttered background". Every image
holds one object whose shape kind is its class, with random position, scale (about 35-70% of the
frame), rotation and brightness. The "clean" variant draws it on a flat gray with mild noise; the
"cluttered" variant draws the very same objects (same seed -> same labels and object parameters)
over distractors - smaller, half-plane-clipped copies of the shape kinds and thin strokes of random
brightness - plus low-frequency texture and stronger grain, which makes the task clearly harder.

Shapes are signed distance functions in a local frame where each shape fits the unit disk; a
pixel's coverage is that distance ramped over one pixel width, which anti-aliases the edges.
Rendering is vectorised over the batch (one evaluation per shape kind and layer) and done in chunks
to bound memory; all randomness comes from a local generator seeded with `seed`.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _box(u: Tensor, v: Tensor, half_width: float, half_height: float) -> Tensor:
    # Exact inside; slightly rounds the corners outside, which only matters within the AA ramp.
    return torch.maximum(u.abs() - half_width, v.abs() - half_height)


def _star(u: Tensor, v: Tensor, points: int, outer_radius: float, inner_radius: float) -> Tensor:
    """Star with `points` tips on the +u axis and every 360/points degrees."""
    sector = 2 * math.pi / points
    # Fold every point into the half-sector next to the +u tip, where the outline is one edge.
    folded = (torch.remainder(torch.atan2(v, u) + sector / 2, sector) - sector / 2).abs()
    radius = torch.hypot(u, v)
    inner_u = inner_radius * math.cos(sector / 2)
    inner_v = inner_radius * math.sin(sector / 2)
    # Outward unit normal of the edge from the tip (outer_radius, 0) to the inner vertex.
    normal_u, normal_v = inner_v, outer_radius - inner_u
    norm = math.hypot(normal_u, normal_v)
    return ((radius * folded.cos() - outer_radius) * normal_u + radius * folded.sin() * normal_v) / norm


def _polygon(u: Tensor, v: Tensor, sides: int, radius: float) -> Tensor:
    # A regular polygon is a star whose inner vertices sit at the edge midpoints.
    return _star(u, v, sides, radius, radius * math.cos(math.pi / sides))


# Class index = position in this table. Ordered so the first ten kinds stay distinct even at low
# resolution under any rotation (hence no diamond: it is a rotated square); the hexagon, which
# is hard to tell from the disk at 16 px, comes last. Every kind fits the unit disk (windowed
# rendering relies on it) and has a mirror axis, so flip augmentation keeps labels valid.
_SHAPE_SDFS = {
    "disk": lambda u, v: torch.hypot(u, v) - 0.85,
    "square": lambda u, v: _polygon(u, v, 4, 0.95),
    "triangle": lambda u, v: _polygon(u, v, 3, 1.0),
    "ring": lambda u, v: (torch.hypot(u, v) - 0.68).abs() - 0.22,
    "plus": lambda u, v: torch.minimum(_box(u, v, 0.9, 0.24), _box(u, v, 0.24, 0.9)),
    "bar_pair": lambda u, v: _box(u, v.abs() - 0.4, 0.8, 0.18),
    "star": lambda u, v: _star(u, v, 5, 1.0, 0.42),
    "ellipse": lambda u, v: (torch.hypot(u / 0.95, v / 0.45) - 1) * 0.45,
    "crescent": lambda u, v: torch.maximum(torch.hypot(u + 0.15, v) - 0.8, 0.68 - torch.hypot(u - 0.3, v)),
    "l_shape": lambda u, v: torch.minimum(_box(u + 0.45, v, 0.2, 0.65), _box(u, v + 0.45, 0.65, 0.2)),
    "arrow": lambda u, v: torch.minimum(_box(u + 0.4, v, 0.5, 0.14), _polygon(u - 0.35, v, 3, 0.6)),
    "t_shape": lambda u, v: torch.minimum(_box(u, v - 0.5, 0.7, 0.2), _box(u, v + 0.2, 0.2, 0.75)),
    "half_disk": lambda u, v: torch.maximum(torch.hypot(u, v + 0.3) - 0.9, -(v + 0.3)),
    "hexagon": lambda u, v: _polygon(u, v, 6, 0.95),
}
_SHAPE_KINDS = tuple(_SHAPE_SDFS.values())
MAX_CLASSES = len(_SHAPE_KINDS)  # one class per shape kind
# Distractors: every shape kind plus a thin stroke (the last index).
_DISTRACTOR_KINDS = _SHAPE_KINDS + (lambda u, v: _box(u, v, 0.98, 0.1),)
_STROKE_SHARE = 1 / 3

BACKGROUNDS = ("clean", "cluttered")
MIN_RESOLUTION = 8
_DISTRACTOR_LAYERS = 8
_DISTRACTOR_PRESENCE = 0.8
_DISTRACTOR_MAX_SCALE = 0.4
_OBJECT_MAX_SCALE = 0.7
_CHUNK_PIXELS = 1 << 22  # ~16 MB per float32 intermediate


class _Primitives(NamedTuple):
    """Per-image parameters of one drawn primitive; every field has shape (m,)."""

    kind: Tensor  # index into the table the primitives are rendered with
    center_x: Tensor  # frame coordinates, the frame spans [-1, 1]
    center_y: Tensor
    scale: Tensor  # local units -> frame units, so also the radius of the disk the shape fits
    angle: Tensor  # radians
    level: Tensor  # gray level in [0, 1]
    opacity: Tensor  # 0 leaves the image untouched
    clip_angle: Tensor | None = None  # optional half-plane that cuts part of the shape away
    clip_offset: Tensor | None = None

    def take(self, index: Tensor | slice) -> "_Primitives":
        return _Primitives(*(None if field is None else field[index] for field in self))


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(count, generator=generator) * (high - low) + low


def _coverage(prims: _Primitives, sdfs: tuple, row_y: Tensor, column_x: Tensor, resolution: int) -> Tensor:
    """Anti-aliased coverage in [0, 1], shape (m, rows, columns), at the given pixel-centre coordinates."""
    coverage = torch.empty(len(prims.kind), row_y.shape[1], column_x.shape[1])
    for kind in prims.kind.unique().tolist():
        index = (prims.kind == kind).nonzero().squeeze(1)
        part = prims.take(index)
        cos, sin = part.angle.cos()[:, None, None], part.angle.sin()[:, None, None]
        inverse_scale = part.scale.reciprocal()[:, None, None]
        dx = (column_x[index, None, :] - part.center_x[:, None, None]) * inverse_scale
        dy = (row_y[index, :, None] - part.center_y[:, None, None]) * inverse_scale
        u = cos * dx + sin * dy
        v = cos * dy - sin * dx
        distance = sdfs[kind](u, v)
        if part.clip_angle is not None:
            clip_u, clip_v = part.clip_angle.cos()[:, None, None], part.clip_angle.sin()[:, None, None]
            distance = torch.maximum(distance, u * clip_u + v * clip_v - part.clip_offset[:, None, None])
        # Local distance -> pixels; a one-pixel linear ramp approximates the covered fraction.
        pixels_per_unit = (part.scale * (resolution / 2))[:, None, None]
        coverage[index] = (0.5 - distance * pixels_per_unit).clamp_(0, 1) * part.opacity[:, None, None]
    return coverage


def _draw(canvas: Tensor, prims: _Primitives, sdfs: tuple, max_scale: float) -> None:
    """Composites one primitive per image onto canvas (m, resolution, resolution), in place."""
    count, resolution = canvas.shape[0], canvas.shape[-1]
    # Only a square window around each primitive is rendered: distractors cover a small part of
    # the frame. +2 pixels leave room for the AA ramp and the rounding of the window origin.
    window = min(resolution, math.ceil(max_scale * resolution) + 2)

    def window_pixels(center: Tensor) -> Tensor:
        # Clamping keeps the window in the frame and still covers the in-frame part of the shape.
        origin = ((center + 1) * (resolution / 2) - window / 2).round().long().clamp(0, resolution - window)
        return origin[:, None] + torch.arange(window)

    rows, columns = window_pixels(prims.center_y), window_pixels(prims.center_x)
    to_frame = lambda pixel: (pixel + 0.5) * (2 / resolution) - 1
    coverage = _coverage(prims, sdfs, to_frame(rows), to_frame(columns), resolution)
    flat_index = (rows[:, :, None] * resolution + columns[:, None, :]).view(count, -1)
    flat_canvas = canvas.view(count, -1)
    patch = flat_canvas.gather(1, flat_index).view(count, window, window)
    patch += coverage * (prims.level[:, None, None] - patch)
    flat_canvas.scatter_(1, flat_index, patch.view(count, -1))


def _random_distractors(count: int, generator: torch.Generator) -> _Primitives:
    kind_weights = torch.full((len(_DISTRACTOR_KINDS),), (1 - _STROKE_SHARE) / len(_SHAPE_KINDS))
    kind_weights[-1] = _STROKE_SHARE
    present = torch.rand(count, generator=generator) < _DISTRACTOR_PRESENCE
    return _Primitives(
        kind=torch.multinomial(kind_weights, count, replacement=True, generator=generator),
        center_x=_uniform(count, -1, 1, generator),
        center_y=_uniform(count, -1, 1, generator),
        scale=_uniform(count, 0.15, _DISTRACTOR_MAX_SCALE, generator),
        angle=_uniform(count, 0, 2 * math.pi, generator),
        level=_uniform(count, 0.05, 1.0, generator),
        opacity=_uniform(count, 0.6, 1.0, generator) * present,
        clip_angle=_uniform(count, 0, 2 * math.pi, generator),
        clip_offset=_uniform(count, -0.2, 0.8, generator),  # keeps roughly 40-100% of the shape
    )


def _add_clutter(canvas: Tensor, layers: list[_Primitives], generator: torch.Generator) -> None:
    count, resolution = canvas.shape[0], canvas.shape[-1]
    for distractors in layers:
        _draw(canvas, distractors, _DISTRACTOR_KINDS, _DISTRACTOR_MAX_SCALE)
    # Smooth blotches on a grid of ~8-pixel cells, like an out-of-focus scene.
    coarse = max(2, resolution // 8)
    texture = torch.randn(count, 1, coarse, coarse, generator=generator)
    texture = F.interpolate(texture, size=(resolution, resolution), mode="bilinear", align_corners=False)
    canvas.add_(texture[:, 0], alpha=0.08)


def _validate(n: int, resolution: int, num_classes: int, background: str) -> None:
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be at least {MIN_RESOLUTION}, got {resolution}")


def render_shapes(
    n: int, *, resolution: int, num_classes: int, background: str, seed: int
) -> tuple[Tensor, Tensor]:
    """Returns (images uint8 of shape (n, 1, resolution, resolution), labels int64 of shape (n,))."""
    _validate(n, resolution, num_classes, background)
    generator = torch.Generator().manual_seed(seed)
    # Everything drawn from `generator` is shared by the clean and cluttered variants.
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    scale = _uniform(n, 0.35, _OBJECT_MAX_SCALE, generator)
    # Keep the centre far enough in that the object stays inside the frame.
    max_shift = 0.9 * (1 - scale)
    objects = _Primitives(
        kind=labels,
        center_x=_uniform(n, -1, 1, generator) * max_shift,
        center_y=_uniform(n, -1, 1, generator) * max_shift,
        scale=scale,
        angle=_uniform(n, 0, 2 * math.pi, generator),
        level=_uniform(n, 0.6, 1.0, generator),
        opacity=torch.ones(n),
    )
    base_level = _uniform(n, 0.05, 0.4, generator)
    background_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

    cluttered = background == "cluttered"
    layers = [_random_distractors(n, background_generator) for _ in range(_DISTRACTOR_LAYERS if cluttered else 0)]
    grain = 0.04 if cluttered else 0.02
    images = torch.empty(n, 1, resolution, resolution, dtype=torch.uint8)
    chunk = max(1, _CHUNK_PIXELS // resolution**2)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        canvas = base_level[rows, None, None].expand(-1, resolution, resolution).contiguous()
        if cluttered:
            _add_clutter(canvas, [distractors.take(rows) for distractors in layers], background_generator)
        _draw(canvas, objects.take(rows), _SHAPE_KINDS, _OBJECT_MAX_SCALE)
        canvas.add_(torch.randn(canvas.shape, generator=background_generator), alpha=grain)
        images[rows, 0] = canvas.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return images, labels

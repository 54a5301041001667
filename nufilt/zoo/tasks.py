"""The embedded benchmark's tasks: 16x16 grey images that need no download.

`TASKS` holds the 20 evaluation tasks in the zoo's numbering (position i plays the role of the
paper's dataset i in `task_orders.json`); the groups of 8, 14 and 20 tasks are prefixes of it.
`PRETRAIN_TASKS` are *other* tasks, used only to pre-train the encoder (the analog of CLIP's
web-scale pre-training). Every generator maps `(rng, n, split)` to images in [0, 1] of shape
(n, 16, 16) and integer labels of shape (n,), with balanced classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

SIZE = 16  # image side in pixels
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # pixel centres, (16, 16)

Generator = Callable[[np.random.Generator, int, str], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TaskSpec:
    """One generated task: a stable name, its class names and the generator."""

    name: str
    classes: tuple[str, ...]
    generate: Generator  # clean images in [0, 1] and labels
    noise: float = 0.15  # typical std of the added pixel noise (varies ±50% per image)
    description: str = ""


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from `parts` that is the same in every process (unlike `hash()`)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_split(spec: TaskSpec, split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, 16, 16) scaled to [-1, 1] and labels (n,) for `split` ("train" | "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng(stable_seed("nufilt-zoo", seed, spec.name, split))
    images, labels = spec.generate(rng, n, split)
    sigma = spec.noise * rng.uniform(0.5, 1.5, size=(n, 1, 1))
    images = images + sigma * rng.standard_normal(images.shape)
    pixels = torch.from_numpy(np.clip(images, 0.0, 1.0).astype(np.float32) * 2.0 - 1.0)
    return pixels.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------- drawing primitives


def _balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % n_classes)


def _segment(y0: float, x0: float, y1: float, x1: float, width: float = 1.0) -> np.ndarray:
    """Anti-aliased line segment from (y0, x0) to (y1, x1), values in [0, 1]."""
    dy, dx = y1 - y0, x1 - x0
    length2 = max(dy * dy + dx * dx, 1e-6)
    t = np.clip(((_YY - y0) * dy + (_XX - x0) * dx) / length2, 0.0, 1.0)
    distance = np.hypot(_YY - (y0 + t * dy), _XX - (x0 + t * dx))
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)


def _disk(cy: float, cx: float, radius: float) -> np.ndarray:
    return np.clip(radius + 0.5 - np.hypot(_YY - cy, _XX - cx), 0.0, 1.0)


def _ring(cy: float, cx: float, radius: float, width: float = 1.0) -> np.ndarray:
    return np.clip(width / 2 + 0.5 - np.abs(np.hypot(_YY - cy, _XX - cx) - radius), 0.0, 1.0)


def _gaussian(cy: float, cx: float, sigma: float) -> np.ndarray:
    return np.exp(-((_YY - cy) ** 2 + (_XX - cx) ** 2) / (2 * sigma * sigma))


def _polygon(vertices: np.ndarray) -> np.ndarray:
    """Filled convex polygon (vertices (k, 2) as (y, x), counter-clockwise or clockwise)."""
    inside = np.ones((SIZE, SIZE), dtype=bool)
    (ay, ax), (by, bx) = vertices[1] - vertices[0], vertices[2] - vertices[1]
    sign = np.sign(ay * bx - ax * by)
    for a, b in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        edge = b - a
        cross = edge[0] * (_XX - a[1]) - edge[1] * (_YY - a[0])
        inside &= sign * cross <= 0
    return inside.astype(np.float32)


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _grating(angle: float, frequency: float, phase: float) -> np.ndarray:
    along = _XX * np.cos(angle) + _YY * np.sin(angle)
    return 0.5 + 0.5 * np.sin(2 * np.pi * frequency * along + phase)


def _smooth_field(rng: np.random.Generator, scale: float = 3.0) -> np.ndarray:
    """A random smooth image in [0, 1] (sum of a few random Gaussian bumps)."""
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(0, SIZE, size=2)
        field += rng.uniform(-1, 1) * _gaussian(cy, cx, scale * rng.uniform(0.6, 1.4))
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift with zero fill (no wrap-around)."""
    out = np.zeros_like(image)
    ys, yd = (slice(0, SIZE - dy), slice(dy, SIZE)) if dy >= 0 else (slice(-dy, SIZE), slice(0, SIZE + dy))
    xs, xd = (slice(0, SIZE - dx), slice(dx, SIZE)) if dx >= 0 else (slice(-dx, SIZE), slice(0, SIZE + dx))
    out[yd, xd] = image[ys, xs]
    return out


# ---------------------------------------------------------------- digits (scikit-learn)


@cache
def _digit_pool(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1797 digits upsampled to 16x16; a fixed 1297 / 500 train / test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=(SIZE, SIZE), mode="bilinear")
    order = np.random.default_rng(stable_seed("digits-split")).permutation(len(images))
    chosen = order[:1297] if split == "train" else order[1297:]
    return images[chosen, 0].numpy(), data.target[chosen].astype(np.int64)


def _digit_samples(rng: np.random.Generator, n: int, split: str, shift: int = 1):
    """`n` digit images (with random shifts and contrast) and their digit labels."""
    pool, targets = _digit_pool(split)
    picks = rng.integers(0, len(pool), size=n)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, pick in enumerate(picks):
        dy, dx = rng.integers(-shift, shift + 1, size=2)
        images[i] = _shift(pool[pick], int(dy), int(dx)) * rng.uniform(0.6, 1.0)
    return images, targets[picks]


def _digits(rng, n, split):
    images, labels = _digit_samples(rng, n, split)
    return images, labels


def _digits_inverted(rng, n, split):
    images, labels = _digit_samples(rng, n, split)
    return 1.0 - images, labels


def _digit_rotation(rng, n, split):
    images, _ = _digit_samples(rng, n, split)
    labels = _balanced_labels(rng, n, 4)
    rotated = np.stack([np.rot90(image, k) for image, k in zip(images, labels, strict=True)])
    return rotated, labels


def _digits_noisy(rng, n, split):
    images, labels = _digit_samples(rng, n, split, shift=2)
    for image in images:  # an occluding grey square
        y, x = rng.integers(0, SIZE - 5, size=2)
        image[y : y + 5, x : x + 5] = rng.uniform(0.2, 0.8)
    return images, labels


def _digit_parity(rng, n, split):
    images, digits = _digit_samples(rng, n, split, shift=2)
    return images, digits % 2


# ---------------------------------------------------------------- evaluation tasks


def _shapes(rng, n, split):
    labels = _balanced_labels(rng, n, 5)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(5.5, 10.5, size=2)
        r = rng.uniform(3.5, 5.0)
        turn = _rotation(rng.uniform(0, 2 * np.pi))
        if label == 0:  # disk
            shape = _disk(cy, cx, r * 0.85)
        elif label == 1:  # square
            corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * r * 0.7
            shape = _polygon(corners @ turn.T + [cy, cx])
        elif label == 2:  # triangle
            angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
            corners = np.stack([np.sin(angles), np.cos(angles)], axis=1) * r
            shape = _polygon(corners @ turn.T + [cy, cx])
        elif label == 3:  # cross
            (ay, ax), (by, bx) = turn @ [r, 0], turn @ [0, r]
            shape = np.maximum(
                _segment(cy - ay, cx - ax, cy + ay, cx + ax, 1.6),
                _segment(cy - by, cx - bx, cy + by, cx + bx, 1.6),
            )
        else:  # ring
            shape = _ring(cy, cx, r * 0.8, 1.3)
        background = rng.uniform(0.0, 0.2)
        images[i] = background + (rng.uniform(0.7, 1.0) - background) * shape
    return images, labels


def _stripes(rng, n, split):
    labels = _balanced_labels(rng, n, 8)
    images = np.stack(
        [
            _grating(label * np.pi / 8 + rng.uniform(-0.1, 0.1), rng.uniform(0.12, 0.3), rng.uniform(0, 6.3))
            * rng.uniform(0.4, 1.0)
            for label in labels
        ]
    )
    return images, labels


def _place_points(rng: np.random.Generator, count: int, margin: float, min_distance: float):
    points: list[np.ndarray] = []
    while len(points) < count:
        point = rng.uniform(margin, SIZE - margin, size=2)
        if all(np.hypot(*(point - other)) >= min_distance for other in points):
            points.append(point)
    return points


def _dot_count(rng, n, split):
    labels = _balanced_labels(rng, n, 6)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        image = np.zeros((SIZE, SIZE), dtype=np.float32)
        for cy, cx in _place_points(rng, int(label) + 1, 2.0, 4.0):
            image = np.maximum(image, _disk(cy, cx, rng.uniform(1.0, 1.4)))
        images[i] = image * rng.uniform(0.8, 1.0)
    return images, labels


def _texture_frequency(rng, n, split):
    labels = _balanced_labels(rng, n, 6)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        low = 0.06 + 0.065 * label
        image = sum(
            _grating(rng.uniform(0, np.pi), rng.uniform(low, low + 0.065), rng.uniform(0, 6.3)) for _ in range(3)
        )
        images[i] = image / 3
    return images, labels


def _line_length(rng, n, split):
    labels = _balanced_labels(rng, n, 4)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        length = 2.5 + 3.5 * label + rng.uniform(-0.5, 0.5)
        angle = rng.uniform(0, np.pi)
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        margin_y, margin_x = abs(dy) + 1, abs(dx) + 1
        cy, cx = rng.uniform(margin_y, SIZE - margin_y), rng.uniform(margin_x, SIZE - margin_x)
        images[i] = _segment(cy - dy, cx - dx, cy + dy, cx + dx, 1.4) * rng.uniform(0.8, 1.0)
    return images, labels


def _checker_size(rng, n, split):
    labels = _balanced_labels(rng, n, 4)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        cell = label + 1
        oy, ox = rng.integers(0, 2 * cell, size=2)
        board = (((_YY.astype(int) + oy) // cell + (_XX.astype(int) + ox) // cell) % 2).astype(np.float32)
        contrast = rng.uniform(0.3, 0.8)
        images[i] = 0.5 + contrast * (board - 0.5)
    return images, labels


def _symmetry(rng, n, split):
    labels = _balanced_labels(rng, n, 2)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        left = _smooth_field(rng, 2.0)[:, : SIZE // 2]
        right = left[:, ::-1] if label == 1 else _smooth_field(rng, 2.0)[:, SIZE // 2 :]
        images[i] = np.concatenate([left, right], axis=1)
    return images, labels


def _brightness(rng, n, split):
    labels = _balanced_labels(rng, n, 5)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        level = 0.2 + 0.15 * label + rng.uniform(-0.04, 0.04)
        images[i] = level + 0.5 * (_smooth_field(rng, 3.0) - 0.5)
    return images, labels


def _blob_quadrant(rng, n, split):
    labels = _balanced_labels(rng, n, 4)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        qy, qx = divmod(int(label), 2)
        image = _disk(qy * 8 + rng.uniform(3, 5), qx * 8 + rng.uniform(3, 5), rng.uniform(2.3, 3.2))
        for other in rng.choice([q for q in range(4) if q != label], size=2, replace=False):
            oy, ox = divmod(int(other), 2)
            image = np.maximum(
                image, _disk(oy * 8 + rng.uniform(2, 6), ox * 8 + rng.uniform(2, 6), rng.uniform(0.8, 1.5))
            )
        images[i] = image * rng.uniform(0.6, 1.0)
    return images, labels


def _ring_count(rng, n, split):
    labels = _balanced_labels(rng, n, 3)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(6.5, 9.5, size=2)
        step = rng.uniform(2.0, 2.4)
        image = np.zeros((SIZE, SIZE), dtype=np.float32)
        for k in range(int(label) + 1):
            image = np.maximum(image, _ring(cy, cx, 1.5 + k * step, 1.0))
        images[i] = image * rng.uniform(0.6, 1.0)
    return images, labels


def _bar_position(rng, n, split):
    labels = _balanced_labels(rng, n, 4)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        x = label * 4 + rng.uniform(1.2, 2.8)
        tilt = rng.uniform(-1.5, 1.5)
        bar = _segment(1, x - tilt, 15, x + tilt, 1.5)
        distractor_y = rng.uniform(2, 14)
        distractor = _segment(distractor_y, 1, distractor_y + rng.uniform(-2, 2), 15, 1.0)
        images[i] = bar * rng.uniform(0.6, 1.0) + 0.5 * distractor
    return images, labels


def _gradient_direction(rng, n, split):
    labels = _balanced_labels(rng, n, 8)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        angle = label * np.pi / 4 + rng.uniform(-0.2, 0.2)
        along = ((_XX - 8) * np.cos(angle) + (_YY - 8) * np.sin(angle)) / 8
        images[i] = 0.5 + rng.uniform(0.15, 0.35) * along + 0.4 * (_smooth_field(rng, 2.5) - 0.5)
    return images, labels


def _line_count(rng, n, split):
    labels = _balanced_labels(rng, n, 4)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        angle = rng.uniform(0, np.pi)
        direction, normal = np.array([np.sin(angle), np.cos(angle)]), np.array([np.cos(angle), -np.sin(angle)])
        gap = rng.uniform(2.6, 3.2)
        image = np.zeros((SIZE, SIZE), dtype=np.float32)
        count = int(label) + 1
        for k in range(count):
            centre = np.array([8.0, 8.0]) + normal * (k - (count - 1) / 2) * gap
            a, b = centre - direction * 5, centre + direction * 5
            image = np.maximum(image, _segment(a[0], a[1], b[0], b[1], 1.0))
        images[i] = image * rng.uniform(0.6, 1.0)
    return images, labels


def _segments_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
    def side(p, q, r):
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    return side(a, b, c) != side(a, b, d) and side(c, d, a) != side(c, d, b)


def _crossing(rng, n, split):
    labels = _balanced_labels(rng, n, 2)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        while True:
            a, b, c, d = rng.uniform(1.5, SIZE - 1.5, size=(4, 2))
            if min(np.hypot(*(b - a)), np.hypot(*(d - c))) > 6 and _segments_cross(a, b, c, d) == bool(label):
                break
        image = np.maximum(_segment(*a, *b, 1.0), _segment(*c, *d, 1.0))
        images[i] = image * rng.uniform(0.6, 1.0)
    return images, labels


def _texture_type(rng, n, split):
    labels = _balanced_labels(rng, n, 4)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        period = rng.uniform(3.0, 5.0)
        if label == 0:  # dot lattice
            phase_y, phase_x = rng.uniform(0, period, size=2)
            image = _grating(0, 1 / period, phase_x) * _grating(np.pi / 2, 1 / period, phase_y)
            image = (image > 0.6).astype(np.float32)
        elif label == 1:  # stripes
            image = _grating(rng.uniform(0, np.pi), 1 / period, rng.uniform(0, 6.3))
        elif label == 2:  # checks
            angle = rng.uniform(0, np.pi)
            image = (_grating(angle, 1 / period, 0) - 0.5) * (_grating(angle + np.pi / 2, 1 / period, 0) - 0.5)
            image = (image > 0).astype(np.float32)
        else:  # blotches
            image = _smooth_field(rng, period / 2)
        images[i] = 0.5 + rng.uniform(0.5, 1.0) * (image - 0.5)
    return images, labels


# ---------------------------------------------------------------- pre-training tasks


@cache
def _prototype_images(count: int, seed: str) -> np.ndarray:
    rng = np.random.default_rng(stable_seed("prototypes", seed))
    return np.stack([_smooth_field(rng, rng.uniform(1.5, 3.5)) for _ in range(count)])


def _prototypes(rng, n, split):
    prototypes = _prototype_images(32, "v1")
    labels = _balanced_labels(rng, n, len(prototypes))
    images = np.stack(
        [_shift(prototypes[label], *map(int, rng.integers(-2, 3, size=2))) * rng.uniform(0.5, 1.0) for label in labels]
    )
    return images, labels


@cache
def _glyph_strokes(count: int) -> np.ndarray:
    rng = np.random.default_rng(stable_seed("glyphs"))
    return rng.uniform(3, 13, size=(count, 3, 4))  # 3 strokes (y0, x0, y1, x1) per glyph


def _glyphs(rng, n, split):
    strokes = _glyph_strokes(24)
    labels = _balanced_labels(rng, n, len(strokes))
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        offset = np.tile(rng.uniform(-1.5, 1.5, size=2), 2)
        image = np.zeros((SIZE, SIZE), dtype=np.float32)
        for stroke in strokes[label]:
            jittered = stroke + offset + rng.uniform(-0.7, 0.7, size=4)
            image = np.maximum(image, _segment(*jittered, 1.1))
        images[i] = image * rng.uniform(0.6, 1.0)
    return images, labels


def _position(rng, n, split):
    labels = _balanced_labels(rng, n, 16)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        gy, gx = divmod(int(label), 4)
        image = _gaussian(gy * 4 + rng.uniform(1, 3), gx * 4 + rng.uniform(1, 3), rng.uniform(0.8, 1.6))
        images[i] = image * rng.uniform(0.5, 1.0) + 0.4 * _smooth_field(rng, 3.0)
    return images, labels


def _gabor(rng, n, split):
    labels = _balanced_labels(rng, n, 12)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        angle = label * np.pi / 12 + rng.uniform(-0.05, 0.05)
        envelope = _gaussian(*rng.uniform(5, 11, size=2), rng.uniform(2.5, 4.0))
        carrier = _grating(angle, rng.uniform(0.15, 0.35), rng.uniform(0, 6.3)) - 0.5
        images[i] = 0.5 + envelope * carrier * rng.uniform(1.0, 1.8)
    return images, labels


def _blob_size(rng, n, split):
    labels = _balanced_labels(rng, n, 6)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        radius = 1.0 + 0.9 * label + rng.uniform(-0.25, 0.25)
        margin = radius + 0.5
        cy, cx = rng.uniform(margin, SIZE - margin, size=2)
        images[i] = _disk(cy, cx, radius) * rng.uniform(0.5, 1.0)
    return images, labels


def _stroke_count(rng, n, split):
    labels = _balanced_labels(rng, n, 5)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        image = np.zeros((SIZE, SIZE), dtype=np.float32)
        for _ in range(int(label) + 1):
            y0, x0 = rng.uniform(2, 14, size=2)
            angle, length = rng.uniform(0, np.pi), rng.uniform(3, 7)
            image = np.maximum(image, _segment(y0, x0, y0 + length * np.sin(angle), x0 + length * np.cos(angle)))
        images[i] = image * rng.uniform(0.6, 1.0)
    return images, labels


def _blur(rng, n, split):
    labels = _balanced_labels(rng, n, 5)
    strokes = _glyph_strokes(24)
    images = np.empty((n, SIZE, SIZE), dtype=np.float32)
    offsets = np.arange(-4, 5, dtype=np.float32)
    for i, label in enumerate(labels):
        image = np.zeros((SIZE, SIZE), dtype=np.float32)
        for stroke in strokes[rng.integers(len(strokes))]:
            image = np.maximum(image, _segment(*(stroke + rng.uniform(-1.5, 1.5, size=4)), 1.2))
        if label > 0:
            kernel = np.exp(-(offsets**2) / (2 * (0.45 * label) ** 2))
            kernel /= kernel.sum()
            image = np.apply_along_axis(np.convolve, 0, image, kernel, mode="same")
            image = np.apply_along_axis(np.convolve, 1, image, kernel, mode="same")
        images[i] = image / max(float(image.max()), 1e-6) * rng.uniform(0.6, 1.0)
    return images, labels


def _names(*names: object) -> tuple[str, ...]:
    return tuple(str(name) for name in names)


def _degrees(count: int, step: float) -> tuple[str, ...]:
    return tuple(f"{step * k:g}deg" for k in range(count))


TASKS: list[TaskSpec] = [
    TaskSpec("digits", _names(*range(10)), _digits, 0.15, "scikit-learn digits, shifted"),
    TaskSpec("shapes", ("disk", "square", "triangle", "cross", "ring"), _shapes, 0.15, "outline class"),
    TaskSpec("stripes", _degrees(8, 22.5), _stripes, 0.3, "grating orientation"),
    TaskSpec("dot-count", _names(*range(1, 7)), _dot_count, 0.12, "number of dots"),
    TaskSpec("texture-frequency", _names(*(f"band{k}" for k in range(6))), _texture_frequency, 0.15, "frequency band"),
    TaskSpec("line-length", ("2.5px", "6px", "9.5px", "13px"), _line_length, 0.15, "length of one line"),
    TaskSpec("checker-size", ("1px", "2px", "3px", "4px"), _checker_size, 0.25, "checkerboard cell size"),
    TaskSpec("symmetry", ("asymmetric", "mirror-symmetric"), _symmetry, 0.15, "left-right mirror symmetry"),
    TaskSpec("digits-inverted", _names(*range(10)), _digits_inverted, 0.15, "digits, inverted contrast"),
    TaskSpec("digit-rotation", _degrees(4, 90), _digit_rotation, 0.15, "rotation of a digit"),
    TaskSpec("brightness", _names(*(f"level{k}" for k in range(5))), _brightness, 0.2, "mean brightness"),
    TaskSpec(
        "blob-quadrant",
        ("top-left", "top-right", "bottom-left", "bottom-right"),
        _blob_quadrant,
        0.15,
        "quadrant of the largest blob",
    ),
    TaskSpec("ring-count", ("1", "2", "3"), _ring_count, 0.15, "concentric rings"),
    TaskSpec("bar-position", _names(*(f"column{k}" for k in range(4))), _bar_position, 0.2, "column of a bar"),
    TaskSpec("digits-noisy", _names(*range(10)), _digits_noisy, 0.3, "digits with occlusion and noise"),
    TaskSpec("gradient-direction", _degrees(8, 45), _gradient_direction, 0.2, "direction of a brightness ramp"),
    TaskSpec("line-count", _names(*range(1, 5)), _line_count, 0.15, "number of parallel lines"),
    TaskSpec("crossing", ("apart", "crossing"), _crossing, 0.15, "do two segments cross"),
    TaskSpec("digit-parity", ("even", "odd"), _digit_parity, 0.15, "parity of a digit"),
    TaskSpec("texture-type", ("dots", "stripes", "checks", "blotches"), _texture_type, 0.2, "kind of texture"),
]

PRETRAIN_TASKS: list[TaskSpec] = [
    TaskSpec("prototypes", _names(*range(32)), _prototypes, 0.25, "32 random smooth prototypes"),
    TaskSpec("glyphs", _names(*range(24)), _glyphs, 0.15, "24 random three-stroke glyphs"),
    TaskSpec("position", _names(*range(16)), _position, 0.15, "blob position on a 4x4 grid"),
    TaskSpec("gabor", _names(*range(12)), _gabor, 0.15, "Gabor patch orientation"),
    TaskSpec("blob-size", _names(*range(6)), _blob_size, 0.15, "disk radius"),
    TaskSpec("stroke-count", _names(*range(1, 6)), _stroke_count, 0.15, "number of random strokes"),
    TaskSpec("blur", _names(*range(5)), _blur, 0.1, "blur level of a random glyph"),
]

TASK_GROUPS = (8, 14, 20)  # the paper's task counts; each group is a prefix of TASKS


def task_spec(name: str) -> TaskSpec:
    for spec in TASKS + PRETRAIN_TASKS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in TASKS)
    raise ValueError(f"unknown zoo task {name!r}; known tasks: {known}")

"""Synthetic shapes: a small image-classification task for tests and the demo dataset.

Each image is one shape (circle, square, triangle, cross, star...) with a random size, position,
rotation, aspect, colour, filled or outlined, on a plain or gradient background, with a few
distractor lines and pixel noise. Colour and position carry no information about the class, so a
model has to learn shape; outlined shapes and distractors keep it from being trivial.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "star")
EXTRA_SHAPES = ("pentagon", "hexagon", "diamond", "ring")  # more classes, for harder variants
SUPERSAMPLE = 4  # drawn 4× larger and downsampled: anti-aliased edges


def _outline(kind: str, radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon points around (0, 0) for a shape of the given circumradius."""

    def ring(n: int, r: float, offset: float = 0.0) -> list[tuple[float, float]]:
        return [(r * math.cos(angle + offset + 2 * math.pi * i / n),
                 r * math.sin(angle + offset + 2 * math.pi * i / n)) for i in range(n)]

    if kind in ("circle", "ring"):
        return ring(48, radius)
    if kind == "square":
        return ring(4, radius)
    if kind == "diamond":  # a rhombus: a square squashed along one axis
        return [(x, 0.55 * y) for x, y in ring(4, radius)]
    if kind == "triangle":
        return ring(3, radius)
    if kind == "pentagon":
        return ring(5, radius)
    if kind == "hexagon":
        return ring(6, radius)
    if kind == "star":
        outer, inner = ring(5, radius), ring(5, radius * 0.42, math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if kind == "cross":
        w, r = radius * 0.32, radius
        plus = [(w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w), (-w, -r), (w, -r), (w, -w),
                (r, -w), (r, w)]
        c, s = math.cos(angle), math.sin(angle)
        return [(x * c - y * s, x * s + y * c) for x, y in plus]
    raise ValueError(f"Unknown shape {kind!r}. Choose one of: {', '.join(SHAPES + EXTRA_SHAPES)}")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float64)


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def render_shape(kind: str, *, size: int = 32, rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """One random image of `kind`, size×size, mode "RGB" or "L"."""
    s = size * SUPERSAMPLE
    # Background: flat or a linear gradient between two colours.
    bg1, bg2 = _colour(rng), _colour(rng)
    if rng.random() < 0.5:
        bg2 = bg1
    t = np.linspace(0, 1, s)[None, :, None]
    theta = rng.uniform(0, 2 * math.pi)
    grid = np.cos(theta) * t + np.sin(theta) * t.transpose(1, 0, 2)  # (s, s, 1), along angle theta
    grid = grid - grid.min()
    background = bg1 + (bg2 - bg1) * grid / max(grid.max(), 1e-9)
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    # Foreground colour clearly different in brightness from the background's mean, so the
    # shape survives conversion to grayscale.
    bg_luma = _luma((bg1 + bg2) / 2)
    for _ in range(20):
        fg = _colour(rng)
        if abs(_luma(fg) - bg_luma) > 70:
            break
    else:
        fg = np.full(3, 255.0 if bg_luma < 128 else 0.0)

    radius = rng.uniform(0.22, 0.46) * s
    cx, cy = rng.uniform(radius, s - radius, size=2)
    stretch = rng.uniform(0.8, 1.2)  # mild anisotropy: shapes are not all perfectly regular
    points = [(cx + x * stretch, cy + y / stretch) for x, y in _outline(kind, radius, rng.uniform(0, 2 * math.pi))]
    colour = tuple(int(v) for v in fg)
    if kind == "ring":
        draw.polygon(points, outline=colour, width=max(2, int(radius * 0.28)))
    elif rng.random() < 0.3:
        draw.polygon(points, outline=colour, width=max(2, int(s * rng.uniform(0.05, 0.09))))
    else:
        draw.polygon(points, fill=colour)

    for _ in range(rng.integers(0, 3)):  # distractor lines
        a, b = rng.uniform(0, s, size=2), rng.uniform(0, s, size=2)
        draw.line([tuple(a), tuple(b)], fill=tuple(int(v) for v in _colour(rng)), width=int(s * 0.03))

    small = image.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64) + rng.normal(0, rng.uniform(0, 14), size=(size, size, 3))
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return out.convert("L") if mode == "L" else out


def render_shapes(*, classes: Sequence[str] = SHAPES, per_class: int = 100, size: int = 32, seed: int = 0,
                  mode: str = "RGB") -> Iterator[tuple[str, int, Image.Image]]:
    """(class, index, image) for per_class images of each class, interleaved, deterministic in seed."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    rng = np.random.default_rng(seed)
    for i in range(per_class):
        for kind in classes:
            yield kind, i, render_shape(kind, size=size, rng=rng, mode=mode)


def write_shapes_archive(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] = SHAPES,
    per_class: int = 100,
    size: int = 32,
    seed: int = 0,
    fmt: str = "zip",
    image_format: str = "png",
    mode: str = "RGB",
    top: str | None = None,
) -> Path:
    """Write `<top>/<class>/<class>_0001.<ext>` members to a .zip or .tar.gz archive at path."""
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    ext = "jpg" if image_format == "jpeg" else "png"
    prefix = f"{top}/" if top else ""

    def members() -> Iterator[tuple[str, bytes]]:
        for kind, i, image in render_shapes(classes=classes, per_class=per_class, size=size, seed=seed, mode=mode):
            yield f"{prefix}{kind}/{kind}_{i + 1:04d}.{ext}", image_bytes(image, image_format)

    return write_archive(path, members(), fmt=fmt)


def image_bytes(image: Image.Image | np.ndarray, fmt: str = "png") -> bytes:
    """Encode an image (or a uint8 H×W or H×W×C array) as PNG, JPEG, BMP, GIF or WebP bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
    return buffer.getvalue()


def write_archive(path: str | os.PathLike, members: Iterable[tuple[str, bytes]] | dict[str, bytes], *,
                  fmt: str = "zip") -> Path:
    """Write (name, bytes) members to a .zip, .tar or .tar.gz archive at path, in the given order."""
    if fmt not in ("zip", "tar.gz", "tar"):
        raise ValueError(f"fmt must be 'zip', 'tar.gz' or 'tar', got {fmt!r}")
    items = members.items() if isinstance(members, dict) else members
    path = Path(path)
    if fmt == "zip":
        # PNG and JPEG are already compressed: storing them is as small and much faster.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in items:
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if fmt == "tar.gz" else "w") as tf:
            now = time.time()
            for name, data in items:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), now, 0o644
                tf.addfile(info, io.BytesIO(data))
    return path
